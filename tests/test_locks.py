"""Heartbeat locks for shared filesystems: exclusive, who holds them, refreshed, stale ones broken once."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from filelock import FileLock, Timeout

from mmdd_bench.locks import HeartbeatLock, LockTimeout, PairedLock, read_lock
from mmdd_bench.store import ResultsStore


def test_a_held_lock_is_exclusive_and_says_who_holds_it(tmp_path):
    path = tmp_path / "x.claim"
    with HeartbeatLock(path, what="shapes random N=4 seed=0", expiry_s=60):
        info = read_lock(path)
        assert info.pid == os.getpid() and info.host and info.what == "shapes random N=4 seed=0"
        assert not info.stale
        with pytest.raises(LockTimeout):
            HeartbeatLock(path, expiry_s=60).acquire(timeout=0)
        with pytest.raises(Timeout):  # callers catch filelock's Timeout for every kind of lock
            HeartbeatLock(path, expiry_s=60).acquire(timeout=0.3)
    assert not path.exists()
    HeartbeatLock(path).acquire(timeout=0).release()


def test_the_heartbeat_is_refreshed_while_held(tmp_path):
    path = tmp_path / "x.claim"
    lock = HeartbeatLock(path, expiry_s=1.0, heartbeat_s=0.05).acquire(timeout=0)
    try:
        first = json.loads(path.read_text())["heartbeat"]
        time.sleep(1.5)  # longer than the expiry: only the beats keep it fresh
        info = read_lock(path)
        assert info.heartbeat > first and not info.stale
        with pytest.raises(LockTimeout):
            HeartbeatLock(path, expiry_s=1.0).acquire(timeout=0)
    finally:
        lock.release()


def _write_holder(path, host="elsewhere", pid=1, age_s=0.0, expiry_s=1.0, token="t0"):
    now = time.time()
    path.write_text(json.dumps({"host": host, "pid": pid, "token": token, "what": "w", "started": now - age_s,
                                "heartbeat": now - age_s, "expiry_s": expiry_s}))


def test_a_lock_of_another_host_is_broken_only_after_its_expiry(tmp_path):
    path = tmp_path / "x.claim"
    _write_holder(path, age_s=0.0, expiry_s=1.0)
    with pytest.raises(LockTimeout):
        HeartbeatLock(path, expiry_s=1.0).acquire(timeout=0)
    _write_holder(path, age_s=5.0, expiry_s=1.0)
    lock = HeartbeatLock(path, expiry_s=1.0).acquire(timeout=0)
    assert read_lock(path).pid == os.getpid()
    lock.release()


def test_a_killed_holder_on_this_host_is_broken_at_once(tmp_path):
    path = tmp_path / "x.claim"
    code = ("import sys, time; from mmdd_bench.locks import HeartbeatLock; "
            f"HeartbeatLock({str(path)!r}, expiry_s=3600).acquire(timeout=0); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(LockTimeout):
        HeartbeatLock(path, expiry_s=3600).acquire(timeout=0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_lock(path).stale  # its file is left behind, but its process is gone
    HeartbeatLock(path, expiry_s=3600).acquire(timeout=0).release()


def test_two_processes_that_find_a_lock_stale_never_both_take_it(tmp_path):
    path = tmp_path / "x.claim"
    for _ in range(20):
        _write_holder(path, age_s=10.0, expiry_s=1.0)
        locks = [HeartbeatLock(path, expiry_s=60) for _ in range(4)]
        won, barrier = [], threading.Barrier(len(locks))

        def take(lock, won=won, barrier=barrier):
            barrier.wait()
            try:
                lock.acquire(timeout=0)
                won.append(lock)
            except LockTimeout:
                pass

        threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) <= 1
        for lock in won:
            lock.release()


def test_a_holder_whose_lock_was_broken_notices(tmp_path):
    path = tmp_path / "x.claim"
    lock = HeartbeatLock(path, expiry_s=60, heartbeat_s=0.05).acquire(timeout=0)
    _write_holder(path, token="someone-else")  # another process broke it and took it
    time.sleep(0.3)
    assert lock.lost
    lock.release()
    assert json.loads(path.read_text())["token"] == "someone-else"  # never removes a lock it lost


def test_the_results_folder_lock_respects_a_foreign_flock_and_records_its_holder(tmp_path):
    store = ResultsStore(tmp_path)
    key = "0123456789abcdef"
    lock = store.lock(key, "eval", what="shapes random N=4 seed=0 trainable-text")
    assert isinstance(lock, PairedLock)
    with FileLock(str(tmp_path / "locks" / f"{key}.eval.lock")):
        with pytest.raises(Timeout):
            lock.acquire(timeout=0)
    assert not store.held()
    with lock.acquire(timeout=0):
        (held,) = store.held()
        assert held.pid == os.getpid() and held.what.endswith("trainable-text")
        with pytest.raises(Timeout):
            store.lock(key, "eval").acquire(timeout=0)
    assert not store.held()
