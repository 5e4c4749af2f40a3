"""The ADS stream state machine (state of the world), driven without a network."""

from __future__ import annotations

import itertools
import random

import pytest

from grpc_balancer.xds.stream import (
    CLUSTER,
    ENDPOINTS,
    LISTENER,
    ROUTE,
    Entry,
    ProtocolError,
    Request,
    Response,
    StreamState,
    World,
)


def world(**types: dict[str, str]) -> World:
    """``world(lds={"a": "v1"})``: resource name → content digest, per short type."""
    urls = {"lds": LISTENER, "rds": ROUTE, "cds": CLUSTER, "eds": ENDPOINTS}
    return {
        urls[k]: {name: Entry(f"{name}@{d}", d) for name, d in v.items()} for k, v in types.items()
    }


def one(responses: list[Response]) -> Response:
    assert len(responses) == 1, responses
    return responses[0]


def ack(r: Response, names: tuple[str, ...] = ()) -> Request:
    return Request(r.type_url, r.version, r.nonce, names)


def nack(r: Response, names: tuple[str, ...] = (), error: str = "bad") -> Request:
    return Request(r.type_url, "", r.nonce, names, error=error)


W = world(lds={"a": "1", "b": "1"}, cds={"a": "1"}, eds={"a": "1"}, rds={"a": "1"})


def test_named_subscription_gets_only_the_named_resources() -> None:
    s = StreamState()
    r = one(s.on_request(Request(LISTENER, resource_names=("a",)), W))
    assert r.names == ("a",) and r.resources == (("a", "a@1"),)
    assert r.version and r.nonce


def test_an_empty_first_listener_or_cluster_request_is_a_wildcard() -> None:
    s = StreamState()
    r = one(s.on_request(Request(LISTENER), W))
    assert r.names == ("a", "b")
    assert s.types[LISTENER].wildcard
    # The wildcard subscriber repeats its empty list in its ACK: still a wildcard, no reply.
    assert s.on_request(ack(r), W) == []
    assert s.types[LISTENER].wildcard
    assert s.types[LISTENER].acked_version == r.version
    # "*" is an explicit wildcard, with names beside it.
    s2 = StreamState()
    assert one(s2.on_request(Request(CLUSTER, resource_names=("*", "zz")), W)).names == ("a",)
    assert s2.types[CLUSTER].wildcard and s2.types[CLUSTER].names == {"zz"}


def test_an_empty_first_route_or_endpoints_request_subscribes_to_nothing() -> None:
    s = StreamState()
    assert s.on_request(Request(ENDPOINTS), W) == []
    assert not s.types[ENDPOINTS].wildcard


def test_ack_records_the_version_and_sends_nothing() -> None:
    s = StreamState()
    r = one(s.on_request(Request(CLUSTER, resource_names=("a",)), W))
    assert s.on_request(ack(r, ("a",)), W) == []
    assert s.types[CLUSTER].acked_version == r.version
    assert s.types[CLUSTER].nack is None


def test_nack_is_remembered_and_the_nacked_version_never_resent() -> None:
    s = StreamState()
    good = one(s.on_request(Request(CLUSTER, resource_names=("a",)), W))
    s.on_request(ack(good, ("a",)), W)
    bad_world = world(cds={"a": "2"})
    bad = one(s.on_world(bad_world))
    assert bad.version != good.version
    assert s.on_request(nack(bad, ("a",), "LB policy is not supported"), bad_world) == []
    state = s.types[CLUSTER]
    assert state.acked_version == good.version  # the client keeps its last good one
    assert state.nack is not None
    assert (state.nack.version, state.nack.error) == (bad.version, "LB policy is not supported")
    assert s.on_world(bad_world) == []  # nothing new: nothing sent
    # The world changes back: the good version again, ACKed; the NACK stays as history.
    fixed = one(s.on_world(world(cds={"a": "1"})))
    assert fixed.version == good.version
    s.on_request(ack(fixed, ("a",)), W)
    assert state.acked_version == good.version and state.nack.error == "LB policy is not supported"


def test_a_stale_nonce_is_ignored() -> None:
    s = StreamState()
    first = one(s.on_request(Request(CLUSTER, resource_names=("a",)), W))
    second = one(s.on_world(world(cds={"a": "2"})))
    assert s.on_request(nack(first, ("a",)), W) == []  # answers the older response
    state = s.types[CLUSTER]
    assert state.nack is None and state.stale_ignored == 1
    s.on_request(ack(second, ("a",)), W)
    assert state.acked_version == second.version


def test_removal_from_a_full_state_type_sends_the_smaller_set() -> None:
    s = StreamState()
    r = one(s.on_request(Request(LISTENER), W))
    s.on_request(ack(r), W)
    gone = one(s.on_world(world(lds={"a": "1"})))
    assert gone.names == ("a",)
    empty = one(s.on_world(world(lds={})))
    assert empty.names == ()  # an empty LDS response: every listener removed


def test_removal_of_endpoints_sends_nothing() -> None:
    """For RDS/EDS a missing name is not a deletion (its parent going is)."""
    s = StreamState()
    r = one(s.on_request(Request(ENDPOINTS, resource_names=("a",)), W))
    s.on_request(ack(r, ("a",)), W)
    assert s.on_world(world(eds={})) == []


def test_subscription_changes_answer_at_once() -> None:
    s = StreamState()
    w = world(eds={"a": "1", "b": "1"})
    r = one(s.on_request(Request(ENDPOINTS, resource_names=("a",)), w))
    r2 = one(s.on_request(Request(ENDPOINTS, r.version, r.nonce, ("a", "b")), w))
    assert r2.names == ("a", "b")
    # Unsubscribing from everything: nothing to send for EDS.
    assert s.on_request(Request(ENDPOINTS, r2.version, r2.nonce, ()), w) == []
    assert s.types[ENDPOINTS].names == set() and not s.types[ENDPOINTS].wildcard
    # A listener subscription to a name that does not exist is answered (empty): the
    # client learns it does not exist instead of waiting for its timer.
    r3 = one(s.on_request(Request(LISTENER, resource_names=("nope",)), W))
    assert r3.names == ()


def test_a_world_change_pushes_only_changed_types() -> None:
    s = StreamState()
    for t, n in ((LISTENER, "a"), (CLUSTER, "a"), (ENDPOINTS, "a")):
        s.on_request(ack(one(s.on_request(Request(t, resource_names=(n,)), W)), (n,)), W)
    new = dict(W)
    new[ENDPOINTS] = world(eds={"a": "2"})[ENDPOINTS]
    r = one(s.on_world(new))
    assert r.type_url == ENDPOINTS and r.resources == (("a", "a@2"),)


def test_a_new_stream_of_a_known_client_is_answered_even_at_its_version() -> None:
    """After a control-plane restart the client sends its last version without a nonce."""
    s = StreamState()
    r = one(s.on_request(Request(CLUSTER, resource_names=("a",)), W))
    again = StreamState()
    r2 = one(again.on_request(Request(CLUSTER, r.version, "", ("a",)), W))
    assert r2.version == r.version  # content digests: a restart keeps the versions
    assert again.types[CLUSTER].acked_version == r.version


def test_versions_are_content_digests() -> None:
    a, b = StreamState(), StreamState()
    ra = one(a.on_request(Request(CLUSTER, resource_names=("a",)), W))
    rb = one(b.on_request(Request(CLUSTER, resource_names=("a",)), W))
    assert ra.version == rb.version
    rc = one(a.on_world(world(cds={"a": "9"})))
    assert rc.version != ra.version


def test_unknown_type_url_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unsupported type URL"):
        StreamState().on_request(Request("type.googleapis.com/x.Y"), W)


@pytest.mark.parametrize("seed", range(20))
def test_random_conversations_keep_the_invariants(seed: int) -> None:
    """Any mix of requests, ACKs, NACKs, stale answers and world changes: nonces are never
    reused, an ACK only ever records a version that was sent, a NACKed version is only
    sent again when the client asks anew, and every response holds only names the
    client subscribed to (or all, for a wildcard)."""
    rng = random.Random(seed)
    s = StreamState()
    sent: dict[str, list[Response]] = {}
    nonces: set[str] = set()
    names = ("a", "b", "c")
    worlds = [
        world(lds={n: str(rng.randint(1, 3)) for n in names if rng.random() < 0.8},
              eds={n: str(rng.randint(1, 3)) for n in names if rng.random() < 0.8})
        for _ in range(5)
    ]  # fmt: skip
    current = worlds[0]
    for _ in range(200):
        step = rng.random()
        t = rng.choice((LISTENER, ENDPOINTS))
        last = sent.get(t, [])
        if step < 0.2:
            current = rng.choice(worlds)
            out = s.on_world(current)
        elif step < 0.35 or not last:
            subs = tuple(n for n in names if rng.random() < 0.5)
            nonce = last[-1].nonce if last else ""
            out = s.on_request(Request(t, "", nonce, subs), current)
        else:
            r = rng.choice(last[-2:])  # sometimes an older one: stale
            subs = tuple(sorted(s.types[t].names)) if t in s.types else ()
            if rng.random() < 0.3:
                before = len(sent.get(t, []))
                out = s.on_request(Request(t, "", r.nonce, subs, error="no"), current)
                assert len(out) + before >= before
            else:
                out = s.on_request(Request(t, r.version, r.nonce, subs), current)
        for resp in out:
            assert resp.nonce not in nonces
            nonces.add(resp.nonce)
            st = s.types[resp.type_url]
            avail = current.get(resp.type_url, {})
            assert set(resp.names) <= set(st.subscribed(avail))
            sent.setdefault(resp.type_url, []).append(resp)
        for st in s.types.values():
            if st.acked_version:
                versions = {r.version for rs in sent.values() for r in rs}
                assert st.acked_version in versions
    assert list(itertools.chain(*sent.values()))
