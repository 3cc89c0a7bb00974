"""Runs examples/first_backup.py, the SDK example of the README, against a server with a
local instance whose disk is a real ext4 image."""

import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_first_backup_example_recovers_the_image(start_server, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(40):
        (tree / f"notes-{i}.txt").write_text(f"note {i}\n" * 300)
    image = tmp_path / "vda.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "32M"], check=True)
    config = (
        '[[instances]]\ncompute_instance_id = "demo-vm"\nfolder_id = "demo-folder"\n'
        f'disks = [{{ name = "vda", path = "{image}" }}]\n'
    )
    server = start_server(config=config)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "first_backup.py"),
         "--endpoint", server.address, "--image", str(image)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical to the backup" in result.stdout
    assert "recovery: 100.0%" in result.stdout
