"""`nodes --wait-for`, `submit` (only the id on stdout) and `--plot` against a federation."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_local_cli import JOB_TOML, _jointstats


def test_nodes_submit_and_result_with_plot(federation, tmp_path: Path) -> None:
    client = str(federation.workdir / "analyst" / "client.toml")
    run = _jointstats("nodes", "--config", client, "--wait-for", "unhcr,jips", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = {line.split()[0]: line for line in run.stdout.splitlines()}
    assert " connected " in lines["unhcr"] and "datasets: households" in lines["unhcr"]
    typo = _jointstats("nodes", "--config", client, "--wait-for", "unhrc", cwd=tmp_path)
    assert typo.returncode == 2  # at once, not after the whole timeout
    assert "error: not a node in the roster: unhrc (nodes: " in typo.stderr
    (tmp_path / "job.toml").write_text(JOB_TOML)
    run = _jointstats("submit", "job.toml", "--config", client, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip()
    assert job_id and "\n" not in job_id and "signing the job" in run.stderr
    bad = _jointstats("result", job_id, "--config", client, "--plot", "x.pdf", cwd=tmp_path)
    assert bad.returncode != 0 and "use .png or .svg" in bad.stderr
    run = _jointstats("status", job_id, "--config", client, "--watch", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    run = _jointstats("result", job_id, "--config", client, "--plot", "r.svg", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert b"<svg" in (tmp_path / "r.svg").read_bytes()[:2000]
