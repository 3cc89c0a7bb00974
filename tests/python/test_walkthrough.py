"""Runs the README walkthrough's commands exactly as written.

The shell blocks of the walkthrough section run in order in one bash process,
as a user pasting them into a terminal would, from the repository root. The
block marked `<!-- walkthrough: background -->` (the server) runs in the
background; the test waits for the server's `listening` line and the local
agent's registration before going on, as a user reading the log would, and
stops the server at the end. The Russian README must carry the same commands.
"""

import os
import pathlib
import re
import shutil
import subprocess

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BACKGROUND_MARK = "<!-- walkthrough: background -->"


def walkthrough_blocks(readme: pathlib.Path):
    """Returns the walkthrough's shell blocks as (text, runs_in_background)."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## ") and "alkthrough" in line
                 or line.startswith("## Пошаговый"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    blocks, i, previous = [], start + 1, ""
    while i < end:
        match = re.match(r"^(\s*)```sh\s*$", lines[i])
        if not match:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        indent = len(match.group(1))
        body = []
        i += 1
        while not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        blocks.append(("\n".join(body), previous == BACKGROUND_MARK))
        previous = ""
        i += 1
    return blocks


def build_script(blocks, server_log: pathlib.Path):
    parts = ["set -euo pipefail", "SERVER_PID=", "stop_server() { if [ -n \"$SERVER_PID\" ]; then "
             "kill -TERM \"$SERVER_PID\" 2>/dev/null || true; wait \"$SERVER_PID\" || true; fi; }",
             "trap stop_server EXIT"]
    for number, (text, background) in enumerate(blocks, start=1):
        parts.append(f"echo '### block {number}'")
        if background:
            assert "\n" not in text.strip(), "the background block must be one command"
            # `exec` makes $! the server itself, so the trap can stop it.
            parts.append(f"( exec {text.strip()} ) > '{server_log}' 2>&1 &")
            parts.append("SERVER_PID=$!")
            # What a user does by watching the server's terminal.
            parts.append(
                f"for _ in $(seq 1 600); do grep -q 'agent registered' '{server_log}' && break; "
                f"kill -0 \"$SERVER_PID\" || {{ cat '{server_log}'; exit 1; }}; sleep 0.1; done")
        else:
            parts.append(text)
    parts.append("echo '### end'")
    return "\n".join(parts) + "\n"


def split_output(stdout: str):
    sections, current = {}, None
    for line in stdout.splitlines():
        match = re.match(r"^### block (\d+)$", line)
        if match:
            current = int(match.group(1))
            sections[current] = []
        elif current is not None and line != "### end":
            sections[current].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


def test_russian_readme_has_the_same_commands():
    english = walkthrough_blocks(REPO_ROOT / "README.md")
    russian = walkthrough_blocks(REPO_ROOT / "README.ru.md")
    assert english == russian


def test_readme_walkthrough_runs_as_written(tmp_path):
    blocks = walkthrough_blocks(REPO_ROOT / "README.md")
    assert sum(1 for _, background in blocks if background) == 1
    assert len(blocks) >= 8

    demo = REPO_ROOT / "demo"
    saved_demo = None
    if demo.exists():
        # Keep a developer's own demo folder out of the way and put it back.
        saved_demo = REPO_ROOT / f"demo.kept-by-test-{os.getpid()}"
        demo.rename(saved_demo)
    server_log = tmp_path / "server.log"
    try:
        result = subprocess.run(["bash", "-c", build_script(blocks, server_log)], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=1500)
        log = server_log.read_text() if server_log.exists() else ""
        context = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\nserver log:\n{log}"
        assert result.returncode == 0, context
        assert "### end" in result.stdout, context
        out = split_output(result.stdout)
        joined = "\n".join(out.values())
        # The instance the server's agent registered is listed.
        assert any("demo-vm" in text for text in out.values()), context
        # The backup exists, the file was deleted, then recovered.
        listing_after_damage = next(text for number, text in out.items()
                                    if "rm /report.txt" in blocks[number - 1][0])
        assert "report.txt" not in listing_after_damage, context
        assert "quarterly figures, final version" in joined, context
        assert "listening" in log
    finally:
        shutil.rmtree(demo, ignore_errors=True)
        if saved_demo is not None:
            saved_demo.rename(demo)
