"""One nightly per root: a second run is refused before any work, and a dead holder blocks nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from recbatch.cli import main
from recbatch.errors import RootBusy
from recbatch.lease import LEASE_FILE, RootLease

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
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
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
