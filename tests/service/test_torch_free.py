"""The API process never imports torch: not at import, and not while handling a .pt upload."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout)


def test_importing_the_api_does_not_import_torch():
    result = _run(
        """
        import sys
        import api.app, ops.serve, ops.keys, backend.formats, backend.storage, api.uploads
        import api.datasets.service, api.checkpoints.service
        api.app.create_app()
        print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_uploads_do_not_import_torch_in_the_api_process(tmp_path):
    import torch

    from estimator.architectures import build_model
    from tests.helpers import MLP, write_checkpoint, write_dataset

    torch.save(build_model(MLP).state_dict(), tmp_path / "m.pt")
    write_checkpoint(tmp_path / "m.safetensors")
    write_dataset(tmp_path / "d.npz", fmt="npz")
    result = _run(
        f"""
        import json, sys
        from fastapi.testclient import TestClient
        from api.app import create_app
        from backend.settings import Settings
        from tests.helpers import create_key
        settings = Settings(data_dir={str(tmp_path / "data")!r})
        with TestClient(create_app(settings, run_dispatcher=False)) as client:
            client.headers["Authorization"] = "Bearer " + create_key(settings, "t")
            arch = json.dumps({MLP!r})
            codes = []
            for name in ("m.pt", "m.safetensors"):
                with open({str(tmp_path)!r} + "/" + name, "rb") as f:
                    codes.append(client.post("/v1/checkpoints", files={{"file": f}}, data={{"architecture": arch}}).status_code)
            with open({str(tmp_path / "d.npz")!r}, "rb") as f:
                codes.append(client.post("/v1/datasets", files={{"file": f}}).status_code)
        print(codes, "torch" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[201, 201, 201] False"
