"""push_to_hub goes through the real huggingface_hub client; only its two network calls are intercepted."""

from types import SimpleNamespace

import huggingface_hub


def test_push_to_hub_uploads_release_format_with_remote_code(tiny_model, monkeypatch):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo_id"] = repo_id
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, **kwargs):
        calls["files"] = {operation.path_in_repo: operation.path_or_fileobj for operation in operations}
        calls["config"] = open(calls["files"]["config.json"], encoding="utf-8").read()
        return SimpleNamespace(commit_url="https://example.invalid/commit", oid="0" * 40, pr_url=None)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    tiny_model.push_to_hub("someone/rad-dino-test")

    assert calls["repo_id"] == "someone/rad-dino-test"
    assert {"config.json", "model.safetensors", "modeling_rad_dino.py", "configuration_rad_dino.py"} <= set(
        calls["files"]
    )
    assert '"model_type": "dinov2"' in calls["config"]
    assert '"AutoModel": "modeling_rad_dino.RadDinoModel"' in calls["config"]
