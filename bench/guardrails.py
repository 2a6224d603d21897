"""Guardrail figures: what the guard step of the request path adds, measured in-process.

`python -m bench.guardrails` (run by `python -m bench`, on the bench database) times
`routing.guardrails.check.check_prompt` for a 1,000-character prompt:
  - no policy (the step's floor: the cached policy list of the workspace);
  - 10 policies (4 keyword lists, 3 RE2 pattern lists, 3 PII detectors), none matching, so
    every one runs over the whole prompt;
  - one moderation policy against a loopback fake of OpenAI's moderation endpoint answering
    in 50 ms: each prompt new (cache miss), and a prompt seen before (cached verdict).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable

WORDS = "a quiet harbour at dawn with fishing boats and gulls over the water and soft light"
PROMPT = (WORDS + " ") * 12  # about 1,000 characters
PROMPT = PROMPT[:1000]
ROUNDS = 2000
SECRET = "sk-bench-moderation"


def _percentiles(timings: list[float]) -> str:
    ordered = sorted(timings)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50={statistics.median(ordered) * 1000:.3f} ms  p99={p99 * 1000:.3f} ms"


def _time(call: Callable[[], None], rounds: int) -> list[float]:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return timings


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aperture.settings")
    import django

    django.setup()
    from billing.metering import Meter
    from routing import services as routing_services
    from routing.guardrails.check import check_prompt
    from routing.guardrails.matching import Prompt
    from routing.guardrails.policies import policies_for
    from routing.guardrails.services import guardrail_create
    from routing.models import Provider
    from tenants import key_auth, services
    from tenants.models import Workspace
    from tests.fakes.upstream import FakeUpstream

    actor = "system:bench"
    suffix = uuid.uuid4().hex[:6]

    def principal_of(slug: str) -> key_auth.KeyPrincipal:
        workspace = services.workspace_create(actor=actor, slug=slug, name=slug)
        team = services.team_create(actor=actor, workspace=workspace, slug="t", name="t")
        created = services.key_create(actor=actor, team=team, name="k")
        return key_auth.authenticate_secret(created.secret)

    def guarded(principal: key_auth.KeyPrincipal, prompt: str = "") -> Callable[[], None]:
        rounds = iter(range(10**9))

        def call() -> None:
            check_prompt(  # a new prompt each time (nothing of one reused for the next)
                principal=principal,
                meter=Meter(request_id=f"req_{uuid.uuid4().hex}", endpoint="bench"),
                route="generations",
                prompt=prompt or f"{PROMPT[:990]} {next(rounds):08d}",
            )

        return call

    bare = principal_of(f"guard-none-{suffix}")
    local = principal_of(f"guard-ten-{suffix}")
    ws = Workspace.objects.get(pk=local.workspace_id)
    policies: list[dict[str, object]] = [
        {"kind": "keywords", "patterns": ["forbidden", "banned phrase", "café noir", "xyzzy"]},
        {"kind": "keywords", "patterns": [f"word{i}" for i in range(50)]},
        {"kind": "keywords", "patterns": ["explosive", "weapon", "contraband"]},
        {"kind": "keywords", "patterns": ["secret project", "codename"]},
        {"kind": "regex", "patterns": [r"(?i)\bJIRA-\d{3,}\b"]},
        {"kind": "regex", "patterns": [r"\b[A-Z]{3}-\d{6}\b", r"(?i)internal[-_ ]only"]},
        {"kind": "regex", "patterns": [r"(a+)+$"]},
        {"kind": "pii", "detectors": ["email"]},
        {"kind": "pii", "detectors": ["payment_card", "iban"]},
        {"kind": "pii", "detectors": ["phone"]},
    ]
    for index, fields in enumerate(policies):
        guardrail_create(actor=actor, workspace=ws, fields={"name": f"p{index}", **fields})

    print("\n## Guardrails: the guard step in-process, 1,000-character prompt")
    for label, principal in (("no policy      ", bare), ("10 policies    ", local)):
        guarded(principal)()  # compiled and cached once
        print(f"{label}: {_percentiles(_time(guarded(principal), ROUNDS))}")
    compiled = policies_for(local.workspace_id)
    rounds = iter(range(10**9))

    def evaluate() -> None:
        prompt = Prompt(f"{PROMPT[:990]} {next(rounds):08d}")
        assert not any(p.find is not None and p.find(prompt) for p in compiled)

    print(f"the 10 policies' checks alone: {_percentiles(_time(evaluate, ROUNDS))}")

    with FakeUpstream(expected_secret=SECRET) as fake:
        fake.moderation_delay = 0.05
        fake.keep_bodies = False
        moderated = principal_of(f"guard-mod-{suffix}")
        credential = routing_services.credential_create(
            actor=actor,
            name=f"moderation-{suffix}",
            provider=Provider.OPENAI,
            base_url=fake.url,
            secret=SECRET,
        )
        guardrail_create(
            actor=actor,
            workspace=Workspace.objects.get(pk=moderated.workspace_id),
            fields={"name": "moderated", "kind": "moderation", "credential": credential},
        )
        guarded(moderated, "warm up")()
        misses = _time(guarded(moderated), 60)
        hits = _time(guarded(moderated, "warm up"), 500)
        print("1 moderation policy, fake endpoint answering in 50 ms:")
        print(f"  new prompt (endpoint called): {_percentiles(misses)}")
        print(f"  repeated prompt (cached)    : {_percentiles(hits)}")


if __name__ == "__main__":
    main()
