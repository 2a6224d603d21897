"""Passthrough's pure rules: paths that may not escape, headers that cross, images counted."""

import base64
import gzip
import json

import pytest

from aperture.errors import InvalidRequest, PermissionError_
from routing import tally as tallies
from routing.passthrough import image_routes
from routing.passthrough.form_fields import FormFieldSniffer, boundary_of
from routing.passthrough.headers import caller_response_headers, upstream_request_headers
from routing.passthrough.paths import check_allowed, forwarded_query, parse_path, upstream_url
from routing.providers.base import ImageRoute

BASE = "https://api.example.com"


@pytest.mark.parametrize(
    "raw",
    [
        "/v1/../admin",
        "/..",
        "/v1/%2e%2e/secrets",
        "/v1/%2E%2E%2Fsecrets",
        "/v1/images/..%2F..%2Ffiles",
        "/./v1",
        "/v1/%5C..%5Cx",
        "/v1/a%00b",
        "/v1/%ff",
    ],
)
def test_paths_that_could_walk_out_of_the_root_are_refused(raw: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_path(raw)
    assert refused.value.code == "invalid_path"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/@evil.example/x", f"{BASE}/@evil.example/x"),
        ("/http://evil.example/x", f"{BASE}/http://evil.example/x"),
        ("//evil.example/x", f"{BASE}//evil.example/x"),
        ("/v1/a%2Fb", f"{BASE}/v1/a%2Fb"),
        ("/v1beta/models/gemini-2.5-flash-image:generateContent", None),
        ("/v1/with space", f"{BASE}/v1/with%20space"),
        ("/v1/a?b", f"{BASE}/v1/a%3Fb"),
        ("/v1/a#b", f"{BASE}/v1/a%23b"),
    ],
)
def test_tricks_in_the_path_never_change_the_upstream_host(raw: str, expected: str | None) -> None:
    url = upstream_url(BASE, parse_path(raw), "")
    assert url == (expected or BASE + raw)
    assert url.startswith(BASE + "/")


def test_the_query_is_forwarded_as_sent_less_the_gateway_key() -> None:
    assert (
        forwarded_query("alt=sse&key=apk_x_y&b=%2F&keyword=1&k%65y=z") == "alt=sse&b=%2F&keyword=1"
    )
    url = upstream_url(BASE + "/", parse_path("/v1/x"), "a=1&key=secret")
    assert url == f"{BASE}/v1/x?a=1"


def test_allowed_prefixes_match_whole_segments() -> None:
    prefixes = ["/v1/images/", "/v1beta/models"]
    for allowed in ("/v1/images/generations", "/v1/images", "/v1beta/models/x:generateContent"):
        check_allowed(parse_path(allowed), prefixes, "openai")
    for refused in ("/v1/imagesX", "/v1/files", "/v1beta/modelsX", "//v1/images/x", "/"):
        with pytest.raises(PermissionError_):
            check_allowed(parse_path(refused), prefixes, "openai")
    check_allowed(parse_path("/anything/at/all"), [], "openai")


def test_upstream_headers_lose_the_callers_key_and_hop_by_hop_ones() -> None:
    incoming = [
        ("Authorization", "Bearer apk_caller"),
        ("Api-Key", "apk_caller"),
        ("X-Api-Key", "apk_caller"),
        ("X-Goog-Api-Key", "apk_caller"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "hop"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Host", "gateway.example"),
        ("Cookie", "sessionid=operator"),
        ("Content-Type", "application/json"),
        ("Accept", "image/*"),
        ("X-Custom", "kept"),
    ]
    headers = upstream_request_headers(
        incoming, injected={"x-goog-api-key": "provider-secret", "X-Org": "o1"}
    )
    assert headers == {
        "Content-Type": "application/json",
        "Accept": "image/*",
        "X-Custom": "kept",
        "x-goog-api-key": "provider-secret",
        "X-Org": "o1",
    }


def test_response_headers_lose_hop_by_hop_ones_cookies_and_cors_grants() -> None:
    upstream = [
        ("Content-Type", "text/event-stream"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close"),
        ("Set-Cookie", "sessionid=upstream; Path=/"),
        ("set-cookie", "csrftoken=upstream"),
        ("Access-Control-Allow-Origin", "*"),
        ("access-control-allow-credentials", "true"),
        ("x-ratelimit-remaining", "9"),
    ]
    assert caller_response_headers(upstream) == [
        ("Content-Type", "text/event-stream"),
        ("x-ratelimit-remaining", "9"),
    ]


def test_the_callers_forwarding_headers_do_not_go_upstream() -> None:
    incoming = [
        ("X-Forwarded-For", "10.0.0.7"),
        ("Forwarded", "for=10.0.0.7;host=gateway.internal"),
        ("X-Forwarded-Host", "gateway.internal"),
        ("X-Forwarded-Proto", "https"),
        ("X-Real-Ip", "10.0.0.7"),
        ("Via", "1.1 lb"),
        ("Content-Type", "application/json"),
    ]
    assert upstream_request_headers(incoming, injected={"Authorization": "Bearer p"}) == {
        "Content-Type": "application/json",
        "Authorization": "Bearer p",
    }


def test_image_routes_are_recognised_per_provider() -> None:
    recognise = image_routes.recognise
    assert recognise("openai", "POST", "/v1/images/edits") == ImageRoute("openai", "openai")
    assert recognise("azure", "POST", "/openai/deployments/gpt-image-1/images/generations") == (
        ImageRoute("azure", "openai", path_model="gpt-image-1")
    )
    assert recognise("gemini", "POST", "/v1beta/models/gemini-2.5-flash-image:generateContent") == (
        ImageRoute("gemini", "gemini", path_model="gemini-2.5-flash-image")
    )
    assert recognise("openai", "GET", "/v1/images/generations") is None
    assert recognise("openai", "POST", "/v1/chat/completions") is None
    assert recognise("stability", "POST", "/v1/images/generations") is None


def _tally(route: ImageRoute, content_type: str, encoding: str = "", cap: int = 10**6):
    return tallies.ResponseTally(
        family=route.family, content_type=content_type, content_encoding=encoding, cap=cap
    )


def test_a_gzipped_json_response_is_counted_in_any_chunking() -> None:
    route = ImageRoute("openai", "openai")
    body = json.dumps(
        {
            "data": [{"b64_json": "aGk="}, {"b64_json": "aGk="}],
            "size": "1024x1536",
            "quality": "high",
            "usage": {"input_tokens": 3, "output_tokens": 400},
        }
    ).encode()
    packed = gzip.compress(body)
    tally = _tally(route, "application/json", "gzip")
    for start in range(0, len(packed), 7):
        tally.feed(packed[start : start + 7])
    counted = tally.result()
    assert counted is not None
    assert (counted.images, counted.size, counted.quality) == (2, "1024x1536", "high")
    assert (counted.input_tokens, counted.output_tokens) == (3, 400)


def test_an_event_stream_counts_completed_images_not_partials() -> None:
    route = ImageRoute("openai", "openai")
    partial = {"type": "image_generation.partial_image", "b64_json": "x" * 5000}
    done = {"type": "image_generation.completed", "b64_json": "y", "usage": {"output_tokens": 7}}
    stream = (
        f"event: image_generation.partial_image\ndata: {json.dumps(partial)}\n\n"
        f"data: {json.dumps(done)}\r\n\r\n"
        f"event: image_generation.completed\ndata: {json.dumps(done)}\n\n"
        "data: [DONE]\n\n"
    ).encode()
    tally = _tally(route, "text/event-stream; charset=utf-8")
    for start in range(0, len(stream), 100):
        tally.feed(stream[start : start + 100])
    counted = tally.result()
    assert counted is not None
    assert (counted.images, counted.output_tokens) == (2, 14)


def test_gemini_images_are_the_inline_image_parts() -> None:
    route = ImageRoute("gemini", "gemini", "gemini-2.5-flash-image")
    image = base64.b64encode(b"png").decode()
    body = {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"text": "hi"},
                        {"inlineData": {"mimeType": "image/png", "data": image}},
                    ]
                }
            },
            {"content": {"parts": [{"inline_data": {"mime_type": "image/jpeg", "data": image}}]}},
        ],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1290},
    }
    counted = tallies.count_json_body(route.family, json.dumps(body).encode())
    assert counted is not None
    assert (counted.images, counted.input_tokens, counted.output_tokens) == (2, 5, 1290)


def test_a_response_over_the_cap_is_not_measured() -> None:
    tally = _tally(ImageRoute("openai", "openai"), "application/json", cap=10)
    tally.feed(b'{"data": [{"b64_json": "aGk="}]}')
    assert tally.result() is None
    assert _tally(ImageRoute("openai", "openai"), "application/json", "br").result() is None


def test_form_fields_are_read_from_a_multipart_body_in_any_chunking() -> None:
    boundary = "----b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n{'P' * 5000}\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="n"\r\n\r\n3\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    parsed = boundary_of(f"multipart/form-data; boundary={boundary}")
    assert parsed == boundary.encode()
    sniffer = FormFieldSniffer(parsed)
    for start in range(0, len(body), 13):
        sniffer.feed(body[start : start + 13])
    assert sniffer.fields == {"model": "gpt-image-1", "n": "3"}
    route = ImageRoute("openai", "openai")
    assert image_routes.request_facts(route, sniffer.fields) == image_routes.RequestFacts(
        model="gpt-image-1", n=3
    )
    assert boundary_of("application/json") is None


def test_a_chunked_upload_is_cut_off_at_the_body_limit(settings) -> None:
    from aperture.errors import PayloadTooLarge
    from billing.metering import Meter
    from routing.passthrough.body import IncomingBody, UploadStream

    settings.MAX_BODY_BYTES = 250_000
    pieces = iter([b"x" * 100_000] * 5)
    body = IncomingBody(read=lambda _n: next(pieces, b""), length=None, content_type="")
    meter = Meter(request_id="r", endpoint="passthrough")
    upload = UploadStream(body, meter)
    sent = []
    with pytest.raises(PayloadTooLarge):
        for chunk in upload:
            sent.append(chunk)
    assert sum(map(len, sent)) == 200_000  # the third chunk crossed the limit: not sent
    assert meter.bytes_in == 300_000


def test_a_malformed_content_length_is_a_400_not_a_500(client) -> None:
    response = client.generic(
        "POST", "/openai/v1/x", b"{}", CONTENT_LENGTH="12abc", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_content_length"


def test_a_malformed_content_length_on_an_image_route_is_a_400_too(client) -> None:
    response = client.generic(
        "POST", "/v1/images/generations", b"{}", CONTENT_LENGTH="x", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_content_length"


def test_an_openai_image_call_without_a_model_is_refused_since_it_cannot_be_priced() -> None:
    route = ImageRoute("openai", "openai")
    for fields in ({"prompt": "x"}, {"model": ""}, {"model": 3}):
        with pytest.raises(InvalidRequest) as refused:
            image_routes.request_facts(route, fields)
        assert (refused.value.code, refused.value.param) == ("model_required", "model")


def test_slashes_the_upstream_ignores_do_not_hide_an_image_route() -> None:
    for path in ("/v1//images/generations", "/v1/images/generations/", "//v1/images//edits//"):
        assert image_routes.recognise("openai", "POST", path) is not None, path


@pytest.mark.parametrize(
    ("provider", "method", "path"),
    [
        ("bfl", "POST", "/v1/flux-2-pro/"),  # images it cannot count
        ("openai", "POST", "/v1/chat/completions"),  # paid work it does not price
        ("openai", "POST", "/v1/responses"),  # images through a tool
        ("gemini", "POST", "/v1alpha/models/gemini-2.5-flash-image:generateContent"),
        ("gemini", "POST", "/v1beta/models/gemini-2.5-flash-image:batchGenerateContent"),
        ("azure", "POST", "/openai/v1/images/generations"),
        ("openai", "PUT", "/v1/x"),
        ("openai", "PATCH", "/v1/x"),
    ],
)
def test_work_the_gateway_cannot_price_is_refused_unless_the_credential_is_free(
    provider: str, method: str, path: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        image_routes.refuse_unpriced(provider, method, path, free=False)
    assert refused.value.code == "route_not_priced"
    image_routes.refuse_unpriced(provider, method, path, free=True)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "DELETE"])
def test_reads_and_deletes_are_relayed_whatever_the_route(method: str) -> None:
    image_routes.refuse_unpriced("bfl", method, "/v1/get_result", free=False)


def test_a_gzip_answer_is_inflated_within_the_cap_not_into_memory() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in about 64 KiB
    tally = tallies.for_answer("openai", "application/json", "gzip")
    tally.cap = 1024 * 1024
    tally.feed(bomb)
    assert (tally.overflowed, tally.result()) == (True, None)


def test_a_priced_answer_is_cut_before_its_hold_could_be_reaped() -> None:
    from billing.metering import Meter
    from routing.relay import Ending, Relay, RelayDeadline

    ended: list[Ending] = []
    relay = Relay(
        source=iter([b'{"data": [', b"]}"]),
        close_source=lambda: None,
        meter=Meter(request_id="r", endpoint="passthrough"),
        on_end=ended.append,
        tally=tallies.for_answer("openai", "application/json", ""),
        priced_seconds=-1,  # already past: the reaper may take the hold now
    )
    with pytest.raises(RelayDeadline):
        list(relay)
    relay.close()
    (ending,) = ended
    assert (ending.outcome, ending.counted) == ("relay_deadline", None)  # charged as estimated


@pytest.mark.parametrize(
    "parts",
    [
        # An RFC 2231 name: servers read it differently.
        "Content-Disposition: form-data; name*=UTF-8''n\r\n\r\n4\r\n",
        # Two dispositions in one part: servers take one or the other.
        'Content-Disposition: form-data; name="x"\r\n'
        'Content-Disposition: form-data; name="n"\r\n\r\n4\r\n',
    ],
)
def test_a_form_whose_priced_fields_servers_would_read_differently_is_refused(parts: str) -> None:
    from billing.metering import Meter
    from routing.passthrough.body import IncomingBody, read_fields

    boundary = "b0undary"
    body = (f"--{boundary}\r\n{parts}--{boundary}--\r\n").encode()
    chunks = [body, b""]
    incoming = IncomingBody(
        read=lambda _n: chunks.pop(0),
        length=None,
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    with pytest.raises(InvalidRequest) as refused:
        read_fields(incoming, Meter(request_id="r", endpoint="passthrough"))
    assert refused.value.code == "invalid_body"


def test_a_file_part_named_like_a_priced_field_is_refused() -> None:
    from billing.metering import Meter
    from routing.passthrough.body import IncomingBody, read_fields

    body = (
        b'--b\r\nContent-Disposition: form-data; name="n"; filename="n.txt"\r\n\r\n9\r\n--b--\r\n'
    )
    chunks = [body, b""]
    incoming = IncomingBody(
        read=lambda _n: chunks.pop(0), length=None, content_type="multipart/form-data; boundary=b"
    )
    with pytest.raises(InvalidRequest) as refused:
        read_fields(incoming, Meter(request_id="r", endpoint="passthrough"))
    assert refused.value.param == "n"


def test_gemini_counts_are_read_in_either_spelling_and_unclear_ones_held_at_the_most() -> None:
    route = ImageRoute("gemini", "gemini", "gemini-2.5-flash-image")
    facts = image_routes.request_facts
    assert facts(route, {"generation_config": {"candidate_count": 3}}).n == 3
    assert facts(route, {"generationConfig": {"candidateCount": 2}}).n == 2
    assert facts(route, {"generationConfig": {"candidateCount": 1, "candidate_count": 4}}).n == 10
    assert facts(route, {"generationConfig": {}, "generation_config": {}}).n == 10
    assert facts(route, {"contents": []}).n == 1


def test_answer_headers_that_would_bind_the_gateways_origin_are_dropped() -> None:
    upstream = [
        ("Strict-Transport-Security", "max-age=63072000"),
        ("Clear-Site-Data", '"*"'),
        ("Alt-Svc", 'h3=":443"'),
        ("Content-Type", "application/json"),
    ]
    assert caller_response_headers(upstream) == [("Content-Type", "application/json")]


def test_a_boundary_that_contains_the_word_boundary_is_read_and_two_boundaries_are_not() -> None:
    browser = "----WebKitFormBoundary7MA4YWxkTrZu0gW"  # Chrome's, Safari's; Django's BoUnDaRy…

    assert boundary_of(f"multipart/form-data; boundary={browser}") == browser.encode()
    assert boundary_of('multipart/form-data; boundary="BoUnDaRyStRiNg"') == b"BoUnDaRyStRiNg"
    assert boundary_of("multipart/form-data; boundary=a; boundary=b") is None
    assert boundary_of("multipart/form-data; BOUNDARY=a; boundary=b") is None
