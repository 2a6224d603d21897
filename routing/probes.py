"""Active probes: deployments whose circuit is open (or half-open) are tried with their
credential's free check call (a model or account listing) and closed when it answers, so a
recovered upstream returns to rotation without waiting for its cooldown or a caller's trial.

Run by the beat task `routing.tasks.probe_open_deployments`. One check call per credential,
however many of its deployments are open; providers without a free call (Seedream, Black
Forest Labs, Z.AI, the local renderer) are left to the half-open trials. A failed probe does
not count as a failure: only traffic opens circuits.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from routing import health
from routing.credential_check import check_credential, has_check_call
from routing.models import Deployment

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 5.0
# At most this many credentials per run (chosen at random when more are open), so a run
# lasts at most about MAX_CREDENTIALS_PER_RUN x PROBE_TIMEOUT_SECONDS.
MAX_CREDENTIALS_PER_RUN = 10


@dataclass(frozen=True)
class Probe:
    credential: str
    deployment_ids: tuple[int, ...]
    ok: bool
    message: str


def open_deployments_probe(*, limit: int = MAX_CREDENTIALS_PER_RUN) -> list[Probe]:
    """Probe the credentials of enabled deployments whose circuit is not closed; close the
    circuits of each credential that answers. Returns what was probed."""
    deployments = list(
        Deployment.objects.filter(enabled=True, credential__enabled=True)
        .select_related("credential")
        .order_by("id")
    )
    candidates = [d for d in deployments if has_check_call(d.credential.provider)]
    now = time.time()
    states = health.states([d.pk for d in candidates])  # one round trip for all of them
    by_credential: dict[int, list[Deployment]] = {}
    for deployment in candidates:
        if states[deployment.pk].status(now) != health.CLOSED:
            by_credential.setdefault(deployment.credential_id, []).append(deployment)
    groups = list(by_credential.values())
    if len(groups) > limit:
        groups = random.sample(groups, limit)
    probes = []
    for group in groups:
        credential = group[0].credential
        try:
            result = check_credential(credential, timeout=PROBE_TIMEOUT_SECONDS)
        except Exception:  # e.g. an undecryptable secret: probe the others all the same
            logger.exception("probe: %s could not be checked", credential.name)
            continue
        if result.ok:
            for deployment in group:
                health.closed(deployment.pk)
            logger.info("probe: %s answered; %d circuit(s) closed", credential.name, len(group))
        probes.append(Probe(credential.name, tuple(d.pk for d in group), result.ok, result.message))
    return probes
