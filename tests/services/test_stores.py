"""The stores alone: cache matching as GitHub documents it, branch scopes, LRU eviction under
the size cap; artifact retention and pruning; the signing secret."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmrunner.errors import ServiceError
from vmrunner.services.artifacts import ArtifactStore
from vmrunner.services.cache import CacheStore
from vmrunner.services.host import job_grant
from vmrunner.services.tokens import JobGrant, Signer, load_secret

REPO = "octo/repo"
MAIN = "refs/heads/main"


def save(store: CacheStore, key: str, scope: str = MAIN, version: str = "v1",
         data: bytes = b"x", repository: str = REPO) -> int:
    entry = store.reserve(repository, scope, key, version)
    path = store.pending(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return store.finalize(repository, scope, key, version, len(data))


def restore(store: CacheStore, key: str, restore_keys: tuple[str, ...] = (),
            scopes: tuple[str, ...] = (MAIN,), version: str = "v1") -> str | None:
    entry = store.lookup(REPO, scopes, key, restore_keys, version)
    return None if entry is None else entry.key


def test_exact_key_first_then_newest_prefix_then_restore_keys_in_order(tmp_path: Path) -> None:
    store = CacheStore(tmp_path, 1 << 30)
    save(store, "npm-linux-aaa")
    save(store, "npm-linux-bbb")
    save(store, "npm-mac-ccc")
    assert restore(store, "npm-linux-aaa") == "npm-linux-aaa"
    assert restore(store, "npm-linux-") == "npm-linux-bbb"  # the key itself as a prefix: newest
    assert restore(store, "npm-linux-zzz", ("npm-mac-", "npm-")) == "npm-mac-ccc"
    assert restore(store, "npm-linux-zzz", ("pip-",)) is None
    # The version (paths, compression) must match too; prefix matching is case-sensitive.
    assert restore(store, "npm-linux-aaa", version="v2") is None
    assert restore(store, "NPM-", ("Npm-linux-",)) is None
    # LIKE wildcards in a key are plain characters.
    assert restore(store, "npm%", ("npm_",)) is None


def test_branches_restore_their_own_then_the_default_branch_never_a_sibling(
    tmp_path: Path,
) -> None:
    store = CacheStore(tmp_path, 1 << 30)
    save(store, "k-main", MAIN)
    save(store, "k-feature-a", "refs/heads/feature-a")
    feature_b = job_grant("1", "j", {"ref": "refs/heads/feature-b", "repository": REPO,
                                     "event": {"repository": {"default_branch": "main"}}})
    assert feature_b.readable_refs == ("refs/heads/feature-b", MAIN)
    assert restore(store, "k-", scopes=feature_b.readable_refs) == "k-main"
    assert restore(store, "k-feature-a", scopes=feature_b.readable_refs) is None
    # A pull request reads its own ref, its base branch, then the default branch.
    pull = job_grant("1", "j", {"ref": "refs/pull/7/merge", "base_ref": "release",
                                "repository": REPO, "event": {}})
    assert pull.readable_refs == ("refs/pull/7/merge", "refs/heads/release", MAIN)
    # Its own scope wins over the default branch's.
    save(store, "k-pr", "refs/pull/7/merge")
    assert restore(store, "k-", scopes=pull.readable_refs) == "k-pr"
    # Another repository's caches are never seen.
    save(store, "k-other", MAIN, repository="someone/else")
    assert restore(store, "k-other", scopes=(MAIN,)) is None


def test_the_least_recently_used_entries_are_evicted_over_the_cap(tmp_path: Path) -> None:
    store = CacheStore(tmp_path, 100)
    save(store, "a", data=b"a" * 40)
    save(store, "b", data=b"b" * 40)
    time.sleep(0.01)
    assert restore(store, "a") == "a"  # a restore is a use
    save(store, "c", data=b"c" * 40)
    assert [e.key for e in store.entries(REPO)] == ["c", "a"]
    assert sum(e.size for e in store.entries(REPO)) <= 100
    assert len(list(tmp_path.rglob("*.blob"))) == 2
    with pytest.raises(ServiceError, match="more than the repository's limit") as refused:
        save(store, "huge", data=b"h" * 101)
    assert refused.value.status == 413
    assert restore(store, "huge") is None
    with pytest.raises(ServiceError, match="already exists"):
        save(store, "c")


@settings(max_examples=25, deadline=None)
@given(
    saved=st.lists(st.text("ab-", min_size=1, max_size=4), min_size=1, max_size=6, unique=True),
    key=st.text("ab-", min_size=1, max_size=4),
    restore_keys=st.lists(st.text("ab-", min_size=1, max_size=3), max_size=3),
)
def test_a_restore_gets_what_githubs_rule_says(
    tmp_path_factory: pytest.TempPathFactory, saved: list[str], key: str,
    restore_keys: list[str],
) -> None:
    store = CacheStore(tmp_path_factory.mktemp("cache"), 1 << 30)
    for name in saved:
        save(store, name)
    expected = None
    if key in saved:
        expected = key
    else:
        for prefix in [key, *restore_keys]:
            matches = [name for name in saved if name.startswith(prefix)]
            if matches:
                expected = matches[-1]  # the newest
                break
    assert restore(store, key, tuple(restore_keys)) == expected


def test_artifacts_expire_with_their_retention_and_are_pruned(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, retention_days=5)
    grant = JobGrant("9", "a", REPO, MAIN, (MAIN,))
    now = time.time()
    short = store.create(grant, "short", now + 3600)
    long = store.create(grant, "long", now + 50 * 86400)  # capped at the retention
    half = store.create(grant, "never-finalized", None)
    for artifact_id in (short, long, half):
        store.upload_blob("9", artifact_id).write_bytes(b"zip")
    store.finalize(grant, "short", 3, "")
    store.finalize(grant, "long", 3, "")
    listed = {a.name: a for a in store.list("9")}
    assert set(listed) == {"short", "long"}
    assert listed["long"].expires_at == pytest.approx(now + 5 * 86400, abs=60)
    assert store.prune(now + 1800) == 0  # nothing expired yet; the upload is still fresh
    assert store.prune(now + 2 * 86400) == 2  # "short" expired; the upload was abandoned
    assert [a.name for a in store.list("9")] == ["long"]
    assert store.prune(now + 6 * 86400) == 1
    assert not (tmp_path / "9").exists()


def test_removing_a_run_removes_its_artifacts_and_unfinished_uploads_only(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path, retention_days=5)
    for run in ("9", "10"):
        grant = JobGrant(run, "a", REPO, MAIN, (MAIN,))
        for name in ("done", "unfinished"):
            store.upload_blob(run, store.create(grant, name, None)).write_bytes(b"zip")
        store.finalize(grant, "done", 3, "")
    assert store.remove_run("9") == 1
    assert not store.run_folder("9").exists()
    assert [a.name for a in store.list("10")] == ["done"]
    assert store.remove_run("9") == 0
    assert store.remove_run("never-ran") == 0
    # Nothing of it is left: ids start again from 1.
    again = store.create(JobGrant("9", "a", REPO, MAIN, (MAIN,)), "done", None)
    assert again == 1


def test_the_signing_secret_is_private_and_made_once(tmp_path: Path) -> None:
    first = load_secret(tmp_path)
    assert load_secret(tmp_path) == first
    assert stat.S_IMODE(os.stat(tmp_path / "services.secret").st_mode) == 0o600
    signer = Signer(first)
    grant = JobGrant("run-1", "build (a, 1)", REPO, MAIN, (MAIN,))
    token = signer.token(grant)
    assert signer.verify(f"Bearer {token}") == grant
    # The scope @actions/artifact reads: Actions.Results:<run>:<job>, three parts.
    import jwt

    scopes = jwt.decode(token, options={"verify_signature": False})["scp"].split(" ")
    results = [s.split(":") for s in scopes if s.startswith("Actions.Results:")]
    assert results == [["Actions.Results", "run-1", grant.job_id]]
