"""
A regular (non-editable) install ships the plugin where twistd finds it.

The suite itself runs from the editable install ``make test`` makes, so the
editable case is covered by every test that starts ``twistd -n chatd``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pip_install_dot_provides_the_twistd_plugin(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(ROOT)],
        check=True, capture_output=True,
    )
    assert (target / "twisted" / "plugins" / "chatd_plugin.py").exists()
    assert (target / "twisted" / "plugins" / "chatd_auth.py").exists()
    assert not (target / "twisted" / "plugins" / "__init__.py").exists()
    assert not (target / "twisted" / "__init__.py").exists()
    # The daemon, the page and the terminal client; no load generator.
    assert (target / "chatd" / "web" / "index.html").exists()
    assert (target / "bin" / "chatd-client").exists()
    shipped = {p.relative_to(target).as_posix() for p in target.rglob("*")}
    assert not [p for p in shipped if "bench" in p], sorted(p for p in shipped if "bench" in p)

    # -S skips site-packages' .pth files, so the editable install of the
    # source tree cannot stand in for the one just made.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]))
    script = (
        "import sys; sys.argv = ['twistd', 'chatd', '--help'];"
        "import chatd; print('chatd from', chatd.__file__);"
        "from twisted.scripts.twistd import run; run()"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", script], cwd=tmp_path, env=env,
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"chatd from {target}" in result.stdout
    assert "--max-message-size" in result.stdout
