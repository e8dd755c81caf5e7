"""The GitHub client against the fake API: token and GitHub App auth, shapes, masking, failures."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vmrunner.runner.masking import Masker
from vmrunner.server.config import GitHubApp
from vmrunner.server.github import COMMENT_MARKER, GitHubClient, Status
from vmrunner.server.testing import FakeGitHub

SHA = "a" * 40


def rsa_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


async def test_a_github_app_signs_a_jwt_and_uses_the_installation_token_it_gets():
    private, public = rsa_pair()
    async with FakeGitHub(
        token="ghs_installation", app_id="4242", app_public_key=public
    ).running() as github:
        app = GitHubApp("4242", private, "77")
        async with GitHubClient(github.url, app=app) as client:
            assert await client.create_status(
                "o/r", SHA, Status("pending", "vmrunner/ci/build", "queued", "http://x/api/runs/1")
            )
            assert await client.create_status(
                "o/r", SHA, Status("success", "vmrunner/ci/build", "done", "http://x/api/runs/1")
            )
    assert [call.path for call in github.calls] == [
        "/app/installations/77/access_tokens",
        f"/repos/o/r/statuses/{SHA}",
        f"/repos/o/r/statuses/{SHA}",
    ]
    assert github.rejected == []


async def test_a_wrong_app_key_or_token_is_refused_and_counted_not_raised():
    private, _ = rsa_pair()
    _, other_public = rsa_pair()
    async with FakeGitHub(app_id="1", app_public_key=other_public).running() as github:
        async with GitHubClient(github.url, app=GitHubApp("1", private, "2")) as app_client:
            assert not await app_client.create_status("o/r", SHA, Status("success", "c", "d", "http://x"))
            assert app_client.failures == 1
        async with GitHubClient(github.url, token="not-the-token") as token_client:
            assert await token_client.create_comment("o/r", 1, "hello") is None
    assert [status for status, _ in github.rejected] == [401, 401]
    assert github.calls == []


async def test_the_fake_rejects_what_github_rejects():
    async with (
        FakeGitHub().running() as github,
        GitHubClient(github.url, token=github.token) as client,
    ):
        assert not await client.create_status("o/r", "not-a-sha", Status("success", "c", "d", "http://x"))
        bad = Status("succeeded", "c", "d", "http://x")  # type: ignore[arg-type]
        assert not await client.create_status("o/r", SHA, bad)
        assert not await client.update_comment("o/r", 999, "x")
    assert [status for status, _ in github.rejected] == [422, 422, 404]


async def test_everything_sent_is_masked_and_comments_carry_the_marker():
    async with FakeGitHub().running() as github:
        client = GitHubClient(github.url, token=github.token, masker=Masker(["p4ssw0rd"]))
        async with client:
            long = "x" * 500 + " p4ssw0rd"
            assert await client.create_status(
                "o/r",
                SHA,
                Status("failure", "vmrunner/p4ssw0rd", "leaked p4ssw0rd " + long, "http://x"),
            )
            comment_id = await client.create_comment(
                "o/r", 5, f"the password is p4ssw0rd and the token {github.token}"
            )
            assert comment_id is not None
            assert await client.find_comment("o/r", 5) == comment_id
            assert await client.find_comment("o/r", 6) is None
    text = repr([call.json for call in github.calls])
    assert "p4ssw0rd" not in text
    assert github.token not in text
    (status,) = github.statuses()
    assert len(status["description"]) <= 140
    assert github.comments[comment_id]["body"].startswith(COMMENT_MARKER)


async def test_github_enterprise_server_is_reached_under_its_api_prefix():
    async with (
        FakeGitHub(prefix="/api/v3").running() as github,
        GitHubClient(github.url, token=github.token) as client,
    ):
        assert github.url.endswith("/api/v3")
        assert await client.create_status("o/r", SHA, Status("pending", "c", "d", "http://x"))
    assert [call.path for call in github.calls] == [f"/api/v3/repos/o/r/statuses/{SHA}"]
