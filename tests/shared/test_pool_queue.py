"""The gateway queue in MySQL (shared/pool/queue.py, dispatch.claim) and the queue position / eta it gives.

Against the real test database: fair rounds, the fair order, claims, requeues,
expiry, ``queue_position`` and ``eta_seconds`` read from shared state,
and two dispatchers racing for the same jobs and slots.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest

from shared import backends, jobs
from shared.context import Context
from shared.db import connect, execute, query, query_one, utcnow
from shared.pool import capabilities, dispatch, queue

CKPT = "CheckpointLoaderSimple.ckpt_name"
URL_A, URL_B = "http://a.test", "http://b.test"
POOL = f"{URL_A},{URL_B}"


def _needs(model: str = "m1.safetensors") -> dict:
    return {"classes": ["CheckpointLoaderSimple", "KSampler"], "values": {CKPT: model}}


def enqueue(conn, user: str, *, workflow: str = "txt2img", model: str = "m1.safetensors", servers: int = 1) -> str:
    """Put one job in the gateway queue as a submit does; distinct submit times (DATETIME(3))."""
    job_id = str(uuid.uuid4())
    conn.begin()
    queue.enqueue(conn, job_id=job_id, user_id=user, workflow=workflow, params={"prompt": "x"},
                  prompt={"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model}}},
                  needs=_needs(model), model=model, inputs=None, servers=servers)
    conn.commit()
    time.sleep(0.003)
    return job_id


def waiting_ids(conn, **kw) -> list[str]:
    return [r["id"] for r in queue.waiting(conn, **kw)]


def ranks(conn, *job_ids) -> list[int]:
    return [query_one(conn, "SELECT fair_rank FROM jobs WHERE id=%s", (j,))["fair_rank"] for j in job_ids]


def row(conn, job_id) -> dict:
    return query_one(conn, "SELECT * FROM jobs WHERE id=%s", (job_id,))


def fair_order(conn) -> list[str]:
    """The rule, written independently, for jobs submitted while none was dispatched: a user's k-th waiting job
    after every other user's (k-1)-th, then by age."""
    rows = query(conn, "SELECT id, user_id, created_at FROM jobs WHERE status='queued' AND backend_id IS NULL "
                       "AND cancel_requested=0")
    by_user: dict[str, list] = {}
    for r in sorted(rows, key=lambda r: (r["created_at"], r["id"])):
        by_user.setdefault(r["user_id"], []).append(r)
    keyed = [(k, r["created_at"], r["id"]) for rs in by_user.values() for k, r in enumerate(rs)]
    return [job_id for _, _, job_id in sorted(keyed)]


def fake_backend(conn, url: str = URL_A) -> dict:
    """A backend row to claim for (queue.claim needs only its id and client_id)."""
    backend_id = backends.ensure_backend(conn, url)
    return {"id": backend_id, "client_id": f"client-{backend_id}"}


def serving_backend(conn, url: str, *, caps: dict, slots: int | None = None, owner: str = "listener-1") -> int:
    """A backend as a live listener leaves it: leased, connected under a clientId, capabilities stored."""
    backend_id = backends.ensure_backend(conn, url)
    assert backends.acquire_lease(conn, backend_id, owner, 120)
    assert backends.set_connected(conn, backend_id, owner, f"client-{backend_id}")
    assert backends.store_capabilities(conn, backend_id, owner, caps, capabilities.digest(caps))
    backends.set_slots(conn, url, slots)
    return backend_id


def caps_with(*models: str) -> dict:
    return {"classes": ["CheckpointLoaderSimple", "KSampler", "SaveImage"], "choices": {CKPT: list(models)}}


# -- fair ranks and the fair order -----------------------------------------------------------

def test_enqueue_ranks_each_users_jobs_from_zero(db_conn):
    a0, a1, b0, a2, b1, c0 = (enqueue(db_conn, u) for u in "aabab" + "c")
    assert ranks(db_conn, a0, a1, a2) == [0, 1, 2]
    assert ranks(db_conn, b0, b1) == [0, 1]
    assert ranks(db_conn, c0) == [0]
    r = row(db_conn, a1)
    assert (r["status"], r["backend_id"], r["model"], r["servers"]) == ("queued", None, "m1.safetensors", 1)


def test_waiting_order_is_fair_between_users(db_conn):
    a = [enqueue(db_conn, "alice") for _ in range(4)]
    b = [enqueue(db_conn, "bob") for _ in range(2)]
    c0 = enqueue(db_conn, "carol")
    a.append(enqueue(db_conn, "alice"))
    b.append(enqueue(db_conn, "bob"))
    expected = [a[0], b[0], c0, a[1], b[1], a[2], b[2], a[3], a[4]]
    assert waiting_ids(db_conn) == expected == fair_order(db_conn)
    assert waiting_ids(db_conn, limit=3) == expected[:3]
    db_conn.begin()
    try:
        assert waiting_ids(db_conn, lock=True) == expected
    finally:
        db_conn.rollback()
    # A job whose cancel was asked is no longer offered to a dispatcher.
    execute(db_conn, "UPDATE jobs SET cancel_requested=1 WHERE id=%s", (b[0],))
    assert b[0] not in waiting_ids(db_conn)
    assert isinstance(queue.waiting(db_conn)[0]["needs"], dict)


def test_claim_takes_a_job_once_and_moves_nobody_back(db_conn):
    backend = fake_backend(db_conn)
    a0, a1, b0, a2 = (enqueue(db_conn, u) for u in "aaba")
    job = {"id": a0, "user_id": "a"}
    assert queue.claim(db_conn, job, backend)
    r = row(db_conn, a0)
    assert (r["status"], r["backend_id"], r["client_id"], r["submit_attempts"]) == (
        "submitting", backend["id"], backend["client_id"], 1)
    assert ranks(db_conn, a1, a2, b0) == [1, 2, 0]  # rounds never change: b0 stays ahead of alice's second
    assert a0 not in waiting_ids(db_conn)
    assert waiting_ids(db_conn) == [b0, a1, a2]
    assert not queue.claim(db_conn, job, backend)  # no longer waiting: nobody takes it twice
    execute(db_conn, "UPDATE jobs SET cancel_requested=1 WHERE id=%s", (b0,))
    assert not queue.claim(db_conn, {"id": b0, "user_id": "b"}, backend)
    assert row(db_conn, b0)["backend_id"] is None


def test_requeue_puts_a_job_back_ahead_of_its_users_younger_jobs(db_conn):
    backend = fake_backend(db_conn)
    a0, a1 = enqueue(db_conn, "a"), enqueue(db_conn, "a")
    assert queue.claim(db_conn, {"id": a0, "user_id": "a"}, backend)
    a2 = enqueue(db_conn, "a")
    b0 = enqueue(db_conn, "b")  # a newcomer joins the current round: after alice's oldest waiting job, a1
    assert ranks(db_conn, a1, a2, b0) == [1, 2, 1]
    assert queue.requeue(db_conn, a0, backend["id"])
    assert ranks(db_conn, a0, a1, a2, b0) == [0, 1, 2, 1]
    assert waiting_ids(db_conn) == [a0, a1, b0, a2]
    r = row(db_conn, a0)
    assert (r["status"], r["backend_id"], r["client_id"], r["number"], r["lost_retries"]) == (
        "queued", None, None, None, 0)


def test_requeue_of_a_lost_running_job_counts_the_retry(db_conn):
    backend = fake_backend(db_conn)
    a0 = enqueue(db_conn, "a")
    assert queue.claim(db_conn, {"id": a0, "user_id": "a"}, backend)
    assert jobs.mark_submitted(db_conn, a0, 7) and jobs.mark_running(db_conn, a0, nodes_total=5, nodes_done=2)
    jobs.update_progress(db_conn, a0, percent=40.0, node="3", value=4, max_=10)
    version = row(db_conn, a0)["version"]
    assert queue.requeue(db_conn, a0, backend["id"], lost=True)
    r = row(db_conn, a0)
    assert (r["status"], r["backend_id"], r["lost_retries"], r["started_at"], r["progress_percent"],
            r["progress_node"], r["nodes_done"]) == ("queued", None, 1, None, 0.0, None, 0)
    assert r["version"] > version
    assert waiting_ids(db_conn) == [a0]


@pytest.mark.parametrize("case", ["other backend", "final", "cancel requested", "unknown"])
def test_requeue_refuses_a_job_that_moved_on(db_conn, case):
    backend = fake_backend(db_conn)
    a0 = enqueue(db_conn, "a")
    assert queue.claim(db_conn, {"id": a0, "user_id": "a"}, backend)
    backend_id = backend["id"]
    if case == "other backend":
        backend_id = fake_backend(db_conn, URL_B)["id"]
    elif case == "final":
        assert jobs.mark_succeeded(db_conn, a0)
    elif case == "cancel requested":
        execute(db_conn, "UPDATE jobs SET cancel_requested=1 WHERE id=%s", (a0,))
    else:
        a0 = str(uuid.uuid4())
    assert not queue.requeue(db_conn, a0, backend_id, lost=True)
    assert waiting_ids(db_conn) == []


def test_expire_fails_a_job_that_waited_too_long(db_conn):
    backend = fake_backend(db_conn)
    a0, a1, a2 = (enqueue(db_conn, "a") for _ in range(3))
    held = enqueue(db_conn, "b")
    assert queue.claim(db_conn, {"id": held, "user_id": "b"}, backend)
    old = utcnow() - timedelta(hours=2)
    execute(db_conn, "UPDATE jobs SET created_at=%s WHERE id IN (%s, %s)", (old, a0, held))
    assert queue.expired(db_conn, 3600) == [a0]  # a job a server holds is not the queue's to expire
    assert queue.expired(db_conn, 3 * 3600) == []
    assert queue.expire(db_conn, a0, "the job waited in the queue longer than 3600s")
    r = row(db_conn, a0)
    assert (r["status"], r["error_code"], r["error_message"]) == (
        "failed", "timeout", "the job waited in the queue longer than 3600s")
    assert r["finished_at"] is not None
    assert ranks(db_conn, a1, a2) == [1, 2]  # rounds never change: nobody moves back
    assert not queue.expire(db_conn, a0, "again")
    assert not queue.expire(db_conn, held, "held")
    assert row(db_conn, held)["status"] == "submitting"


# -- queue position --------------------------------------------------------------------------

def ahead(conn, job_id) -> int:
    return jobs.get_job(conn, job_id)["ahead"]


def test_queue_position_counts_fair_order_and_jobs_held_not_started(db_conn):
    backend = fake_backend(db_conn)
    held = [enqueue(db_conn, "h") for _ in range(4)]
    for job_id in held:
        assert queue.claim(db_conn, {"id": job_id, "user_id": "h"}, backend)
    assert jobs.mark_submitted(db_conn, held[1], 11)                          # held, in ComfyUI's queue
    assert jobs.mark_submitted(db_conn, held[2], 12) and jobs.mark_running(db_conn, held[2])  # started
    assert jobs.mark_submitted(db_conn, held[3], 13) and jobs.mark_succeeded(db_conn, held[3])  # done
    held_not_started = 2                                                       # held[0] submitting, held[1] queued
    for u in "aabcab":
        enqueue(db_conn, u)
    order = waiting_ids(db_conn)
    assert order == fair_order(db_conn) and len(order) == 6
    for position, job_id in enumerate(order):
        assert ahead(db_conn, job_id) == position + held_not_started, job_id
        got = jobs.job_object(jobs.get_job(db_conn, job_id))
        assert got["status"] == "queued" and got["queue_position"] == position + held_not_started
    # Jobs a server holds: counted on their server; a running or final one has no position.
    assert jobs.job_object(jobs.get_job(db_conn, held[2]))["queue_position"] is None
    assert ahead(db_conn, held[3]) == 0


def test_oldest_waiting_job_never_moves_back_when_others_submit(db_conn):
    b0 = enqueue(db_conn, "bob")
    a0 = enqueue(db_conn, "alice")
    positions = {a0: [ahead(db_conn, a0)], b0: [ahead(db_conn, b0)]}
    assert positions == {a0: [1], b0: [0]}
    for user in ["bob", "bob", "carol", "dave", "carol", "alice", "erin", "bob", "alice", "frank"]:
        enqueue(db_conn, user)
        for job_id in (a0, b0):
            positions[job_id].append(ahead(db_conn, job_id))
    for job_id, seen in positions.items():
        assert seen == sorted(seen, reverse=True) and seen[-1] == seen[0], (job_id, seen)


def test_a_newcomer_joins_the_current_round_never_ahead_of_anyones_oldest_waiting_job(db_conn):
    """After dispatches too: alice's a1 is her oldest waiting job once a0 is sent; carol's first job goes after it."""
    backend = fake_backend(db_conn)
    a = [enqueue(db_conn, "alice") for _ in range(3)]
    b0 = enqueue(db_conn, "bob")
    assert queue.claim(db_conn, {"id": a[0], "user_id": "alice"}, backend)
    before = {j: ahead(db_conn, j) for j in (a[1], b0)}
    c0 = enqueue(db_conn, "carol")
    d0 = enqueue(db_conn, "dave")
    assert waiting_ids(db_conn) == [b0, a[1], c0, d0, a[2]]
    assert {j: ahead(db_conn, j) for j in (a[1], b0)} == before  # neither oldest job moved back


def test_a_burst_does_not_jump_ahead_of_another_users_waiting_job_as_it_is_dispatched(make_config, db_conn):
    """Steady state: one slot frees at a time. The dispatch order must be the fair order the jobs had.

    alice submits 4 jobs, then bob 1: the fair order is a0, b0, a1, a2, a3 (bob's first job after
    alice's first), and bob's queue_position is 1. Dispatching one job at a time must keep it.
    """
    cfg = make_config(COMFYUI_URLS=URL_A)
    backend_id = serving_backend(db_conn, URL_A, caps=caps_with("m1.safetensors"), slots=1)
    a = [enqueue(db_conn, "alice") for _ in range(4)]
    b0 = enqueue(db_conn, "bob")
    assert waiting_ids(db_conn) == [a[0], b0, a[1], a[2], a[3]]
    assert ahead(db_conn, b0) == 1
    ctx = Context(cfg)
    dispatched, bob_positions = [], [ahead(db_conn, b0)]
    try:
        for _ in range(5):
            claims = dispatch.claim(ctx)
            assert [b["id"] for _, b in claims] == [backend_id]
            dispatched.append(claims[0][0])
            if row(db_conn, b0)["backend_id"] is None:
                bob_positions.append(ahead(db_conn, b0))
            assert jobs.mark_succeeded(db_conn, claims[0][0])  # the slot frees
    finally:
        ctx.db.close()
    order = ", ".join("b0" if j == b0 else f"a{a.index(j)}" for j in dispatched)
    assert dispatched == [a[0], b0, a[1], a[2], a[3]], f"dispatch order {order}; bob's queue_position {bob_positions}"
    assert bob_positions == sorted(bob_positions, reverse=True), f"bob's queue_position went {bob_positions}"


# -- eta from shared state -------------------------------------------------------------------

def test_eta_is_the_same_from_every_instance(make_config, db_conn):
    workflow = f"eta-{uuid.uuid4().hex[:8]}"
    try:
        jobs.record_run_time(db_conn, workflow, 10.0)
        backend = fake_backend(db_conn)
        held = enqueue(db_conn, "h", workflow=workflow)
        assert queue.claim(db_conn, {"id": held, "user_id": "h"}, backend)
        for u in "abc":
            enqueue(db_conn, u, workflow=workflow)
        target = enqueue(db_conn, "d", workflow=workflow, servers=2)
        cfg = make_config()
        instances = [Context(cfg), Context(cfg)]

        def read(ctx):
            with ctx.db.connection() as conn:
                return jobs.job_object(jobs.get_job(conn, target))

        try:
            seen = [read(instances[i % 2]) for i in range(6)]
            # 3 waiting before it + 1 held, over the 2 servers able to run it, itself and half a run.
            assert {(s["queue_position"], s["eta_seconds"]) for s in seen} == {(4, 10.0 * (4 / 2 + 1.5))}
            # A new mean run time is seen by every instance at once: nothing is kept per instance.
            jobs.record_run_time(db_conn, workflow, 20.0)  # 10 + 0.2 * (20 - 10) = 12
            seen = [read(ctx) for ctx in instances]
            assert [s["eta_seconds"] for s in seen] == [round(12.0 * 3.5, 1)] * 2
            # An independent connection (another process) answers the same.
            other = connect(cfg.database_url)
            try:
                assert jobs.eta_seconds(jobs.get_job(other, target)) == seen[0]["eta_seconds"]
            finally:
                other.close()
        finally:
            for ctx in instances:
                ctx.db.close()
    finally:
        execute(db_conn, "DELETE FROM workflow_stats WHERE workflow=%s", (workflow,))


def test_eta_is_null_without_a_recorded_run_time(db_conn):
    workflow = f"eta-{uuid.uuid4().hex[:8]}"
    job_id = enqueue(db_conn, "a", workflow=workflow)
    got = jobs.job_object(jobs.get_job(db_conn, job_id))
    assert got["queue_position"] == 0 and got["eta_seconds"] is None


# -- two dispatchers racing ------------------------------------------------------------------

def test_two_dispatchers_never_claim_a_job_twice_nor_overfill_a_server(make_config, db_conn):
    cfg = make_config(COMFYUI_URLS=POOL, COMFYUI_SLOTS="2")
    slots = {URL_A: 2, URL_B: 3}
    ids = {URL_A: serving_backend(db_conn, URL_A, caps=caps_with("m1.safetensors"), slots=None),  # COMFYUI_SLOTS
           URL_B: serving_backend(db_conn, URL_B, caps=caps_with("m1.safetensors", "m2.safetensors"), slots=3)}
    only_b = set()
    for n in range(60):
        model = "m2.safetensors" if n % 4 == 0 else "m1.safetensors"
        job_id = enqueue(db_conn, f"user{n % 5}", model=model)
        if model == "m2.safetensors":
            only_b.add(job_id)
    contexts = [Context(cfg), Context(cfg)]
    seen: list[str] = []
    for round_ in range(6):
        barrier = threading.Barrier(2)
        results: list[list] = [[], []]
        errors: list[BaseException] = []

        def run(i):
            try:
                barrier.wait(timeout=10)
                for _ in range(3):
                    results[i].extend(dispatch.claim(contexts[i]))
            except BaseException as e:  # a deadlock or lock timeout is a failure, not a skip
                errors.append(e)
            finally:
                contexts[i].db.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        claimed = [job_id for r in results for job_id, _ in r]
        assert len(claimed) == len(set(claimed)), f"round {round_}: a job was claimed twice"
        assert not set(claimed) & set(seen), f"round {round_}: a job was claimed again"
        seen.extend(claimed)
        held = {r["backend_id"]: r["n"] for r in query(
            db_conn, "SELECT backend_id, COUNT(*) AS n FROM jobs WHERE status IN ('submitting','queued','running') "
                     "AND backend_id IS NOT NULL GROUP BY backend_id")}
        assert held == {ids[URL_A]: slots[URL_A], ids[URL_B]: slots[URL_B]}, f"round {round_}: {held}"
        for r in results:
            for job_id, backend in r:
                stored = row(db_conn, job_id)
                assert (stored["status"], stored["backend_id"], stored["client_id"]) == (
                    "submitting", backend["id"], f"client-{backend['id']}")
                if job_id in only_b:
                    assert backend["id"] == ids[URL_B], f"job {job_id} needs m2, sent to {backend['url']}"
        # Every slot frees: the jobs finish.
        for job_id in claimed:
            assert jobs.mark_succeeded(db_conn, job_id)
    assert len(seen) == 6 * sum(slots.values())


def test_a_server_that_lost_the_job_records_no_final_state_for_it(db_conn):
    """A run that ended on the server that lost the job (it moved on) decides nothing."""
    a, b = fake_backend(db_conn, URL_A), fake_backend(db_conn, URL_B)
    job_id = enqueue(db_conn, "alice")
    assert queue.claim(db_conn, {"id": job_id, "user_id": "alice"}, a)
    assert queue.requeue(db_conn, job_id, a["id"])
    assert queue.claim(db_conn, {"id": job_id, "user_id": "alice"}, b)
    assert not jobs.mark_succeeded(db_conn, job_id, on=a["id"])
    assert not jobs.mark_failed(db_conn, job_id, code="output_copy_failed", message="x", on=a["id"])
    assert not jobs.mark_cancelled(db_conn, job_id, on=a["id"])
    assert row(db_conn, job_id)["status"] == "submitting"
    assert jobs.mark_succeeded(db_conn, job_id, on=b["id"])


def test_releasing_a_job_whose_cancel_came_meanwhile_cancels_it(make_config, db_conn):
    from listener.reconcile import release_job
    a = fake_backend(db_conn, URL_A)
    job_id = enqueue(db_conn, "alice")
    assert queue.claim(db_conn, {"id": job_id, "user_id": "alice"}, a)
    seen = jobs.get_row(db_conn, job_id)  # what release_held read before the cancel landed
    execute(db_conn, "UPDATE jobs SET cancel_requested=1 WHERE id=%s", (job_id,))
    ctx = Context(make_config(COMFYUI_URLS=URL_A))
    try:
        release_job(ctx, {"id": a["id"], "url": URL_A}, seen)
    finally:
        ctx.db.close()
    assert row(db_conn, job_id)["status"] == "cancelled"
    assert query_one(db_conn, "SELECT COUNT(*) AS n FROM usage_records WHERE job_id=%s", (job_id,))["n"] == 1


def test_a_claim_reads_past_a_long_head_that_only_busy_servers_can_run(make_config, db_conn):
    """150 waiting jobs need the full server A; the 151st needs the free server B: B gets it."""
    ids = {URL_A: serving_backend(db_conn, URL_A, caps=caps_with("m1.safetensors"), slots=1),
           URL_B: serving_backend(db_conn, URL_B, caps=caps_with("m2.safetensors"), slots=1)}
    ctx = Context(make_config(COMFYUI_URLS=POOL))
    try:
        head = enqueue(db_conn, "u0")
        assert [job_id for job_id, _ in dispatch.claim(ctx)] == [head]  # A is full now
        assert row(db_conn, head)["backend_id"] == ids[URL_A]
        for n in range(150):
            enqueue(db_conn, f"u{n + 1}")
        tail = enqueue(db_conn, "late", model="m2.safetensors")
        claims = dispatch.claim(ctx)
        assert [job_id for job_id, _ in claims] == [tail]
        assert row(db_conn, tail)["backend_id"] == ids[URL_B]
    finally:
        ctx.db.close()
