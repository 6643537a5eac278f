"""One nightly per root: a second run is refused before any work, and a dead holder blocks nothing
(a local root: a flock; an s3:// root: a conditional-write lease with an expiry, on a real SeaweedFS)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from recbatch.cli import main
from recbatch.config import StorageConfig
from recbatch.errors import RootBusy, StorageAccessError, UsageError
from recbatch.lease import LEASE_FILE, ObjectStoreLease, RootLease, root_lease

HOLDER = textwrap.dedent(
    """
    import sys
    from recbatch.lease import RootLease

    with RootLease(sys.argv[1], "nightly 2026-11-28"):
        print("held", flush=True)
        sys.stdin.read()  # hold until killed or stdin closes
    """
)


def test_second_nightly_on_a_root_is_refused_and_a_killed_holder_frees_it(tmp_path, capsys):
    root = tmp_path / "root"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["nightly", "--root", str(root), "--run-date", "2026-11-29"])
        err = capsys.readouterr().err
        assert code == RootBusy.exit_code == 8
        assert f"pid {holder.pid}" in err and "nightly 2026-11-28" in err and str(root) in err
        assert sorted(p.name for p in root.iterdir()) == [LEASE_FILE]  # nothing run, not even a summary
        # The other commands that rewrite or delete under the root wait their turn too.
        users = tmp_path / "users.csv"
        users.write_text("user_id\n1\n")
        for argv in (["gc", "--keep-runs", "1"], ["forget", "--users", str(users)]):
            assert main([*argv, "--root", str(root)]) == 8, argv
            assert "nightly 2026-11-28" in capsys.readouterr().err
        assert sorted(p.name for p in root.iterdir()) == [LEASE_FILE]
        with pytest.raises(RootBusy):  # in-process too
            with RootLease(root, "nightly 2026-11-30"):
                pass
    finally:
        _kill(holder)
    # The kernel released the dead holder's lease: the next run takes it at once.
    with RootLease(root, "nightly 2026-11-29") as lease:
        assert f'"pid": {os.getpid()}' in lease.path.read_text()
    assert lease.path.read_text() == ""  # released and cleared


def test_a_lease_is_taken_again_after_its_holder_left(tmp_path):
    with RootLease(tmp_path, "first"):
        pass
    with RootLease(tmp_path, "second"):
        with pytest.raises(RootBusy, match="second"):
            with RootLease(tmp_path, "third"):
                pass


# --------------------------------------------------------------------------- object-store roots (S3)

S3_HOLDER = textwrap.dedent(
    """
    import sys
    from recbatch.config import StorageConfig
    from recbatch.fs import locate
    from recbatch.lease import ObjectStoreLease

    storage = StorageConfig(endpoint=sys.argv[2], scheme="http", region="us-east-1")
    with ObjectStoreLease(locate(sys.argv[1], storage), storage, "nightly 2026-11-28", ttl_seconds=2):
        print("held", flush=True)
        sys.stdin.read()  # hold (renewing) until killed or stdin closes
    """
)


def _hold(root_uri: str, endpoint: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", S3_HOLDER, root_uri, endpoint],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL, as a crash would; then reap it and close our ends of its pipes."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stdin.close()
    process.stdout.close()


def _until(condition, seconds: float, what: str) -> float:
    """Poll `condition` (a lease's expiry has no event to wait on); the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not within {seconds} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_s3_lease_refuses_a_second_run_and_takes_over_a_dead_holders(s3_root, caplog):
    holder = _hold(s3_root.uri, s3_root.server.endpoint)
    try:
        with pytest.raises(RootBusy) as busy:  # the default (nightly) lease, through the dispatcher
            with root_lease(s3_root.uri, s3_root.storage, "nightly 2026-11-29"):
                pass
        message = str(busy.value)
        assert f"pid {holder.pid}" in message and "nightly 2026-11-28" in message and s3_root.uri in message
        assert f"{s3_root.uri}/{LEASE_FILE}" in message and busy.value.exit_code == 8
    finally:
        _kill(holder)
    taker = ObjectStoreLease(s3_root.locate(), s3_root.storage, "nightly 2026-11-29", ttl_seconds=2)
    with pytest.raises(RootBusy):  # just killed: its lease has not lapsed yet
        taker.__enter__()

    def taken() -> bool:
        try:
            taker.__enter__()
            return True
        except RootBusy:
            return False

    with caplog.at_level(logging.WARNING, logger="recbatch.lease"):
        # ttl 2 s + 1 s of clock resolution after its last renewal; polled, bounded well above that.
        _until(taken, 15, "the dead holder's lease taken over")
    try:
        assert f"pid {holder.pid}" in caplog.text and "took over the lease" in caplog.text
        assert f'"pid": {os.getpid()}' in _lease_body(s3_root)
    finally:
        taker.__exit__(None, None, None)
    assert f"{s3_root.bucket}/{s3_root.prefix}/{LEASE_FILE}" not in s3_root.keys()  # released
    with root_lease(s3_root.uri, s3_root.storage, "nightly 2026-11-30"):  # at once
        pass


def test_of_runs_racing_for_a_free_s3_lease_exactly_one_wins(s3_root):
    import threading

    racers = 8
    start = threading.Barrier(racers)
    leases = [ObjectStoreLease(s3_root.locate(), s3_root.storage, f"run {i}", ttl_seconds=60) for i in range(racers)]
    outcomes: list[str] = [""] * racers

    def race(i: int) -> None:
        start.wait()
        try:
            leases[i].__enter__()
            outcomes[i] = "held"
        except RootBusy:
            outcomes[i] = "refused"

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["held"] + ["refused"] * (racers - 1)
    winner = outcomes.index("held")
    assert f'"what": "run {winner}"' in _lease_body(s3_root)
    leases[winner].__exit__(None, None, None)


def test_s3_lease_is_renewed_while_held_and_a_lost_lease_stops_its_holder(s3_root):
    lease = ObjectStoreLease(s3_root.locate(), s3_root.storage, "nightly 2026-11-28", ttl_seconds=1)
    # Leaving the block with a lost lease raises: the run cannot end as if nothing had happened.
    with pytest.raises(RootBusy, match="taken over by another run"):
        with lease:
            # Seven renewals, 0.25 s apart: held well past ttl + clock resolution, and still refused to others.
            _until(lambda: lease.renewals >= 7, 15, "seven renewals")
            with pytest.raises(RootBusy, match="nightly 2026-11-28"):
                with ObjectStoreLease(s3_root.locate(), s3_root.storage, "nightly 2026-11-29", ttl_seconds=1):
                    pass
            lease.check()  # still ours
            # Another run takes the lease (as one would after this run stalled past its ttl): the holder notices.
            fs = s3_root.server.admin_filesystem()
            with fs.open_output_stream(f"{s3_root.bucket}/{s3_root.prefix}/{LEASE_FILE}") as out:
                out.write(b'{"what": "nightly 2026-11-29", "ttl_seconds": 120}')
            _until(lambda: lease._lost is not None, 15, "the renewal noticing the takeover")
    with pytest.raises(RootBusy, match="taken over by another run"):
        lease.check()
    assert "nightly 2026-11-29" in _lease_body(s3_root)  # released without deleting the successor's lease


def test_an_s3_lease_taken_over_just_before_release_is_left_to_its_new_holder(s3_root):
    lease = ObjectStoreLease(s3_root.locate(), s3_root.storage, "nightly 2026-11-28", ttl_seconds=600)
    successor = b'{"what": "nightly 2026-11-29", "ttl_seconds": 120}'
    with pytest.raises(RootBusy, match="taken over by another run before this run released it"):
        with lease:  # no renewal runs in this test (600 s ttl): only the release meets the successor
            fs = s3_root.server.admin_filesystem()
            with fs.open_output_stream(f"{s3_root.bucket}/{s3_root.prefix}/{LEASE_FILE}") as out:
                out.write(successor)
    assert _lease_body(s3_root) == successor.decode()  # the successor's lease was not deleted


def test_a_release_the_store_refuses_is_logged_not_raised(s3_root, monkeypatch, caplog):
    """The run's work is done by then: failing it would be wrong, and the lease lapses by itself."""
    from s3_helpers import credentials_env

    from recbatch.fs import s3_client

    with caplog.at_level(logging.WARNING, logger="recbatch.lease"):
        with ObjectStoreLease(s3_root.locate(), s3_root.storage, "nightly 2026-11-28", ttl_seconds=600) as lease:
            credentials_env(monkeypatch, secret="revoked-in-the-meantime")
            lease._client = s3_client(s3_root.storage)  # as if its credentials were revoked mid-run
    assert "could not release the lease" in caplog.text and s3_root.bucket in caplog.text
    assert "nightly 2026-11-28" in _lease_body(s3_root)  # still there: it lapses after its ttl


def test_s3_lease_with_wrong_credentials_names_the_bucket(s3_root, monkeypatch):
    from s3_helpers import credentials_env

    wrong = "wr0ng-Lease-Secret-77"
    credentials_env(monkeypatch, secret=wrong)
    with pytest.raises(StorageAccessError) as err:
        with root_lease(s3_root.uri, s3_root.storage, "nightly 2026-11-28"):
            pass
    assert f"bucket '{s3_root.bucket}'" in str(err.value) and wrong not in str(err.value)
    assert err.value.exit_code == 9 and s3_root.keys() == []


@pytest.mark.parametrize("command", ["gc", "forget", "nightly"])
def test_a_command_on_an_s3_root_is_refused_while_leased_and_names_the_bucket_on_wrong_credentials(
    command, s3_root, monkeypatch, capsys, tmp_path
):
    """Every command that takes the root's lease, through the CLI on a real S3 server: exit 8 naming the
    holder while another run holds it, exit 9 naming the bucket (never the key) with wrong credentials;
    nothing is left under the root either way."""
    from s3_helpers import credentials_env, storage_flags

    monkeypatch.chdir(tmp_path)  # nothing may land in a local folder named "s3:"
    flags = {"gc": ["--keep-runs", "1"], "forget": ["--users", str(tmp_path / "users.csv")],
             "nightly": ["--source", str(tmp_path)]}[command]
    argv = [command, *flags, "--root", s3_root.uri, *storage_flags(s3_root)]
    with ObjectStoreLease(s3_root.locate(), s3_root.storage, "nightly 2026-11-28", ttl_seconds=60):
        assert main(argv) == 8
        assert "nightly 2026-11-28" in capsys.readouterr().err
    wrong = "wr0ng-Lease-Secret-31"
    credentials_env(monkeypatch, secret=wrong)
    assert main(argv) == 9
    err = capsys.readouterr().err
    assert f"bucket '{s3_root.bucket}'" in err and wrong not in err
    assert s3_root.keys() == [] and list(tmp_path.iterdir()) == []


def test_leases_on_gs_roots_are_refused_clearly(tmp_path):
    with pytest.raises(UsageError, match="gs:// roots is not implemented"):
        root_lease("gs://bucket/root", StorageConfig(), "nightly")
    with root_lease(tmp_path, StorageConfig(), "nightly") as lease:  # a local root: the flock lease
        assert isinstance(lease, RootLease) and lease.path == tmp_path / LEASE_FILE


def _lease_body(s3_root) -> str:
    fs = s3_root.server.admin_filesystem()
    with fs.open_input_stream(f"{s3_root.bucket}/{s3_root.prefix}/{LEASE_FILE}") as f:
        return f.read().decode()
