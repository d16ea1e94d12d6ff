"""Host and remote-folder arguments of the SSH verbs, checked without a server."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from hms_core.errors import ConfigError
from hms_core.ops import remote, ssh

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("ssh", "rsync")),
                                reason="needs the OpenSSH client and rsync")


def test_a_host_that_looks_like_an_option_is_refused(tmp_path):
    marker = tmp_path / "proxy_ran"
    host = f"-oProxyCommand=touch {marker}"
    with pytest.raises(ConfigError, match=r"--host '-oProxyCommand=.*must not .* start with '-'"):
        ssh.run_remote(host, "true", capture=True, timeout_s=20)
    with pytest.raises(ConfigError, match=r"--host '-oProxyCommand="):
        remote.deploy(host, None, "hms", None, [], project_dir=tmp_path)
    assert not marker.exists()
    argv = ssh.ssh_argv("user@example", "true")
    assert argv[-3:] == ["--", "user@example", "true"]


@pytest.mark.parametrize("given, rel", [("~/runs/a b", "runs/a b"), ("~", "."), ("runs/x", "runs/x")])
def test_a_home_relative_dir_is_one_folder_for_the_shell_and_rsync(tmp_path, given, rel):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    # the remote shell starts in the home folder; so does rsync's remote side
    subprocess.run(["sh", "-c", f"mkdir -p {ssh.shell_dir(given)} && cd {ssh.shell_dir(given)} && pwd -P"],
                   cwd=home, env=env, check=True, capture_output=True)
    src = tmp_path / "src"
    src.mkdir()
    (src / "Snakefile").write_text("rule all:\n")
    subprocess.run(["rsync", "-a", "--", f"{src}/", f"{ssh.rsync_dir(given)}/"], cwd=home, check=True)
    assert (home / rel / "Snakefile").is_file()
    assert not (home / "~").exists()
    with pytest.raises(ConfigError, match=r"--dir '~other/x': only ~ and ~/"):
        ssh.shell_dir("~other/x")
