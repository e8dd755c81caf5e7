"""The services over HTTP on their unix socket: tokens, refusals, uploads as the Azure SDK
sends them, concurrency, and what is listed when."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time

import httpx
import jwt

from tests.services.conftest import Served
from vmrunner.services.app import ARTIFACT_SERVICE, CACHE_SERVICE
from vmrunner.services.tokens import JobGrant

RUN = "555"


def grant(job: str = "a", run: str = RUN, ref: str = "refs/heads/main") -> JobGrant:
    return JobGrant(run, job, "octo/repo", ref, (ref, "refs/heads/main"))


def ids(g: JobGrant) -> dict[str, str]:
    return {"workflow_run_backend_id": g.run_id, "workflow_job_run_backend_id": g.job_id}


async def call(client: httpx.AsyncClient, method: str, body: dict[str, object],
               service: str = ARTIFACT_SERVICE) -> httpx.Response:
    return await client.post(f"/twirp/{service}/{method}", json=body)


async def upload(served: Served, g: JobGrant, name: str, data: bytes, blocks: int = 1) -> int:
    """CreateArtifact, Put Block for each part, Put Block List, FinalizeArtifact: the id."""
    async with served.client(g) as client:
        created = await call(client, "CreateArtifact", {**ids(g), "name": name, "version": 4})
        assert created.status_code == 200, created.text
        url = created.json()["signed_upload_url"]
        size = -(-len(data) // blocks)
        names = []
        for number in range(blocks):
            block = base64.b64encode(f"block-{number:06d}".encode()).decode()
            names.append(block)
            put = await client.put(
                httpx.URL(url).copy_merge_params({"comp": "block", "blockid": block}),
                content=data[number * size:(number + 1) * size],
            )
            assert put.status_code == 201, put.text
        listing = "".join(f"<Latest>{n}</Latest>" for n in names)
        committed = await client.put(httpx.URL(url).copy_merge_params({"comp": "blocklist"}),
                                     content=f"<BlockList>{listing}</BlockList>")
        assert committed.status_code == 201, committed.text
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        final = await call(client, "FinalizeArtifact",
                           {**ids(g), "name": name, "size": str(len(data)), "hash": digest})
        assert final.status_code == 200, final.text
        return int(final.json()["artifact_id"])


async def test_requests_without_a_valid_token_are_refused_with_401(served: Served) -> None:
    body = {**ids(grant()), "name": "x", "version": 4}
    async with served.client() as client:
        missing = await call(client, "CreateArtifact", body)
        assert missing.status_code == 401
        assert missing.json()["code"] == "unauthenticated"
        assert "missing runtime token" in missing.json()["msg"]
        forged = jwt.encode({"scp": "x", "exp": time.time() + 60, "vmrunner": {}}, "not ours" * 5,
                            algorithm="HS256")
        response = await client.post(
            f"/twirp/{ARTIFACT_SERVICE}/CreateArtifact", json=body,
            headers={"authorization": f"Bearer {forged}"},
        )
        assert response.status_code == 401
        assert "Signature verification failed" in response.json()["msg"]
        expired = served.host.signer.token(grant(), now=time.time() - 10 * 86400)
        response = await client.post(
            f"/twirp/{CACHE_SERVICE}/GetCacheEntryDownloadURL", json={"key": "k", "version": "v"},
            headers={"authorization": f"Bearer {expired}"},
        )
        assert response.status_code == 401
        assert response.json()["msg"] == "the runtime token has expired"
    async with served.client(grant(run="other")) as client:
        response = await call(client, "ListArtifacts", ids(grant()))
        assert response.status_code == 403
        assert "does not grant access to run 555" in response.json()["msg"]


async def test_malformed_and_oversized_requests_get_a_clear_4xx(served: Served) -> None:
    async with served.client(grant()) as client:
        response = await client.post(f"/twirp/{ARTIFACT_SERVICE}/CreateArtifact", content=b"{nope")
        assert response.status_code == 400
        assert "not JSON" in response.json()["msg"]
        response = await client.post(f"/twirp/{ARTIFACT_SERVICE}/CreateArtifact",
                                     content=b"[" + b"1," * 600_000 + b"1]")
        assert response.status_code == 413
        response = await call(client, "Nothing", {})
        assert response.status_code == 404
        assert "no such method" in response.json()["msg"]
        response = await call(client, "CreateArtifact", {**ids(grant()), "name": "x",
                                                         "version": 4, "expires_at": "soon"})
        assert response.status_code == 400
        assert "RFC 3339" in response.json()["msg"]


async def test_artifact_names_that_could_leave_their_folder_are_refused(served: Served) -> None:
    async with served.client(grant()) as client:
        for name in ("../escape", "a/b", "a\\b", "..", "", "x\x00y"):
            response = await call(client, "CreateArtifact",
                                  {**ids(grant()), "name": name, "version": 4})
            assert response.status_code == 400, (name, response.text)
            assert response.json()["code"] == "invalid_argument"
    assert not any(served.host.settings.artifacts_dir.rglob("*.json"))


async def test_blob_urls_are_signed_for_one_blob_and_one_permission(served: Served) -> None:
    g = grant()
    async with served.client(g) as client:
        created = await call(client, "CreateArtifact", {**ids(g), "name": "n", "version": 4})
        url = httpx.URL(created.json()["signed_upload_url"])
        assert url.path == f"/vmrunner/artifacts/{RUN}~1"
        tampered = url.copy_with(path=f"/vmrunner/artifacts/{RUN}~2")
        assert (await client.put(tampered, content=b"x")).status_code == 403
        as_reader = url.copy_set_param("sp", "r")
        assert (await client.get(as_reader)).status_code == 403
        unsigned = url.copy_remove_param("sig")
        response = await client.put(unsigned, content=b"x")
        assert response.status_code == 403
        assert b"not signed" in response.content


async def test_an_unfinalized_upload_is_never_listed(served: Served) -> None:
    g = grant()
    async with served.client(g) as client:
        created = await call(client, "CreateArtifact", {**ids(g), "name": "half", "version": 4})
        assert (await client.put(created.json()["signed_upload_url"], content=b"zip")).is_success
        listed = await call(client, "ListArtifacts", ids(g))
        assert listed.json() == {"artifacts": []}
        missing = await call(client, "GetSignedArtifactURL", {**ids(g), "name": "half"})
        assert missing.status_code == 404


async def test_an_artifact_is_downloaded_by_another_job_and_names_are_unique(
    served: Served,
) -> None:
    data = bytes(range(256)) * 5000
    artifact_id = await upload(served, grant("a"), "dist", data, blocks=3)
    async with served.client(grant("b")) as client:
        listed = (await call(client, "ListArtifacts", ids(grant("b")))).json()["artifacts"]
        assert [(a["name"], a["database_id"], a["size"]) for a in listed] == [
            ("dist", str(artifact_id), str(len(data)))
        ]
        assert listed[0]["workflow_job_run_backend_id"] == grant("a").job_id
        url = (await call(client, "GetSignedArtifactURL",
                          {**ids(grant("b")), "name": "dist"})).json()["signed_url"]
        got = await client.get(url)
        assert got.status_code == 200
        assert got.content == data
        again = await call(client, "CreateArtifact", {**ids(grant("b")), "name": "dist",
                                                      "version": 4})
        assert again.status_code == 409
        assert "already exists" in again.json()["msg"]


async def test_concurrent_uploads_get_distinct_ids_and_one_name_wins_once(
    served: Served,
) -> None:
    payloads = {f"job{n}": bytes([n]) * (100_000 + n) for n in range(8)}
    made = await asyncio.gather(*(
        upload(served, grant(job), f"art-{job}", data, blocks=2) for job, data in payloads.items()
    ))
    assert sorted(made) == list(range(1, 9))

    async def create(job: str) -> int:
        async with served.client(grant(job)) as client:
            response = await call(client, "CreateArtifact",
                                  {**ids(grant(job)), "name": "same", "version": 4})
            return response.status_code

    codes = await asyncio.gather(*(create(f"racer{n}") for n in range(6)))
    assert sorted(codes) == [200] + [409] * 5
    async with served.client(grant()) as client:
        listed = (await call(client, "ListArtifacts", ids(grant()))).json()["artifacts"]
        for artifact in listed:
            got = await client.get((await call(client, "GetSignedArtifactURL", {
                **ids(grant()), "name": artifact["name"]})).json()["signed_url"])
            assert got.content == payloads[artifact["name"].removeprefix("art-")]


async def test_a_cache_entry_is_immutable_and_a_miss_is_not_an_error(served: Served) -> None:
    g = grant()
    async with served.client(g) as client:
        miss = await call(client, "GetCacheEntryDownloadURL",
                          {"key": "k-1", "restore_keys": ["k-"], "version": "v1"}, CACHE_SERVICE)
        assert miss.json()["ok"] is False
        created = await call(client, "CreateCacheEntry", {"key": "k-1", "version": "v1"},
                             CACHE_SERVICE)
        url = created.json()["signed_upload_url"]
        put = await client.put(url, content=b"tarball", headers={"x-ms-blob-type": "BlockBlob"})
        assert put.status_code == 201
        done = await call(client, "FinalizeCacheEntryUpload",
                          {"key": "k-1", "version": "v1", "size_bytes": "7"}, CACHE_SERVICE)
        assert done.json()["ok"] is True
        twice = await call(client, "CreateCacheEntry", {"key": "k-1", "version": "v1"},
                           CACHE_SERVICE)
        assert twice.status_code == 409
        assert (await client.put(url, content=b"other")).status_code == 409
        hit = await call(client, "GetCacheEntryDownloadURL",
                         {"key": "k-2", "restore_keys": ["k-"], "version": "v1"}, CACHE_SERVICE)
        assert hit.json()["matched_key"] == "k-1"
        assert (await client.get(hit.json()["signed_download_url"])).content == b"tarball"
