"""Screenshots of TensorBoard's Scalars, Images and Histograms dashboards, as PNG files.

    python -m tools.tensorboard_screenshots                  # trains a short run first (about 30 s)
    python -m tools.tensorboard_screenshots --logdir=runs    # shows the runs already there
    python -m tools.tensorboard_screenshots --out_dir=docs/screenshots  # the docs' pictures

Without --logdir (or with one that holds no runs yet) it writes a 3-epoch training run `mlp`
and the convergence suite `convergence/...`, starts the real TensorBoard on a free 127.0.0.1
port, and has headless Chromium (Debian's `chromium` package) load each dashboard as a person
would and save what it shows to --out_dir. Not part of `make test`: it needs Chromium.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

# Before the imports that load TensorFlow: it sets up what the terminal shows of it.
from trainer.common import terminal  # isort: split

from absl import app, flags, logging

from launch.ports import free_ports
from trainer.common import child_processes

flags.DEFINE_string(
    "logdir",
    None,
    "Runs to show. If unset or without runs, a short training run and the "
    "convergence suite are written there first (unset: a temporary directory).",
)
flags.DEFINE_string(
    "out_dir",
    os.path.join("runs", "screenshots"),
    "Where the PNG files go; the pictures in docs/tensorboard.md are in docs/screenshots, "
    "replaced only when named here.",
)
flags.DEFINE_string("chromium", "chromium", "The Chromium binary (a path or a name on PATH).")

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Dashboard:
    file_name: str
    tab: str  # TensorBoard's URL fragment for the dashboard.
    tag_filter: str  # The regex in the dashboard's tag filter box, kept in the URL.
    height: int  # Window height that frames the "Tags matching" section and little else.


DASHBOARDS = (
    Dashboard("tensorboard_scalars.png", "scalars", r"^(train|eval)/|^loss$", 780),
    Dashboard("tensorboard_images.png", "images", r"misclassified|^loss_function$|^paths/", 1100),
    # The first layer's weight matrix has one slot per optimizer: Adam's m and v, momentum's change.
    Dashboard("tensorboard_histograms.png", "histograms", r"^weights/|^optimizer/.*dense_0_w", 710),
)
WINDOW_WIDTH = 1600
# Virtual time runs only while the page has no request in flight, so this is the time the
# Angular app gets to render after its data arrived; it costs a few seconds of real time.
VIRTUAL_TIME_MS = 20_000


def write_demo_runs(logdir: str) -> None:
    """A 3-epoch MLP run `mlp` (a few seconds) and the convergence suite under `convergence`."""
    # Imported here: TensorFlow takes seconds to load and is not needed to show existing runs.
    from trainer.config import TrainConfig
    from trainer.convergence.settings import SuiteSettings
    from trainer.convergence.suite import run_and_report
    from trainer.recipe import train_and_evaluate

    train_and_evaluate(
        TrainConfig(
            logdir=logdir,
            run_name="mlp",
            epochs=3,
            hidden_sizes=(256,),
            batch_size=256,
            data_source="bundled",
            warmup_epochs=0.0,
        )
    )
    run_and_report(SuiteSettings(), os.path.join(logdir, "convergence"))


def has_runs(logdir: str) -> bool:
    return any(
        name.startswith("events.out.tfevents.") for _, _, names in os.walk(logdir) for name in names
    )


@contextlib.contextmanager
def tensorboard(logdir: str, log_path: str, timeout: float = 120.0):
    """The real TensorBoard on 127.0.0.1, done loading `logdir`; yields its URL."""
    [port] = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        # A blocking, one-off load: the server answers only once every run is read, and no
        # reload changes the data while the pages render.
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                f"--logdir={logdir}",
                "--host=127.0.0.1",
                f"--port={port}",
                "--load_fast=false",
                "--reload_task=blocking",
                "--reload_interval=0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                runs = _get_json(f"{url}/data/runs")
                break
            except OSError:
                pass
            if process.poll() is not None:
                raise RuntimeError(
                    f"TensorBoard exited with code {process.returncode}: {_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"TensorBoard did not answer within {timeout:.0f} s")
            time.sleep(0.5)
        if not runs:
            raise RuntimeError(f"TensorBoard found no runs under {logdir}")
        yield url
    finally:
        child_processes.stop([process], time.monotonic() + 30)


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def dashboard_url(server_url: str, dashboard: Dashboard) -> str:
    tag_filter = urllib.parse.quote(dashboard.tag_filter, safe="")
    return f"{server_url}/#{dashboard.tab}&tagFilter={tag_filter}"


def screenshot(chromium: str, url: str, out_path: str, height: int, scratch_dir: str) -> None:
    """Loads `url` in headless Chromium with a fresh profile and saves the window as a PNG."""
    with tempfile.TemporaryDirectory(dir=scratch_dir) as profile:
        result = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-sync",
                # Without these Chromium keeps calling Google's servers, which fail offline.
                "--disable-background-networking",
                "--disable-component-update",
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW_WIDTH},{height}",
                f"--virtual-time-budget={VIRTUAL_TIME_MS}",
                f"--screenshot={out_path}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    if result.returncode != 0 or not os.path.isfile(out_path):
        raise RuntimeError(
            f"chromium failed on {url} (code {result.returncode}): {result.stderr[-2000:]}"
        )


def capture(logdir: str, out_dir: str, chromium: str, scratch_dir: str) -> list[str]:
    """Serves `logdir` with TensorBoard and saves a PNG per dashboard with data; returns them.

    A dashboard without data is skipped rather than saved as TensorBoard's "No data" page.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    with tensorboard(logdir, os.path.join(scratch_dir, "tensorboard.log")) as server_url:
        plugins = _get_json(f"{server_url}/data/plugins_listing")
        for dashboard in DASHBOARDS:
            if not plugins.get(dashboard.tab, {}).get("enabled"):
                print(f"skipped {dashboard.tab}: no such data under {logdir}")
                continue
            path = os.path.join(out_dir, dashboard.file_name)
            screenshot(
                chromium, dashboard_url(server_url, dashboard), path, dashboard.height, scratch_dir
            )
            paths.append(path)
    return paths


def _tail(path: str, chars: int = 2000) -> str:
    with open(path) as f:
        return f.read()[-chars:]


def main(argv):
    terminal.refuse_arguments(argv)
    logging.set_verbosity(logging.WARNING)  # The trainer's progress lines are enough.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Read when TensorFlow loads, if it does.
    chromium = shutil.which(FLAGS.chromium)
    if chromium is None:
        sys.exit(
            f"tools.tensorboard_screenshots: error: {FLAGS.chromium} not found; "
            "install Debian's chromium: apt-get install chromium"
        )
    if FLAGS.logdir is not None and os.path.isfile(FLAGS.logdir):
        terminal.exit_with_error(f"--logdir={FLAGS.logdir} is a file")
    with tempfile.TemporaryDirectory(prefix="screenshots-") as scratch_dir:
        logdir = FLAGS.logdir or os.path.join(scratch_dir, "logdir")
        try:
            if not has_runs(logdir):
                print(f"writing a training run and the convergence suite to {logdir}")
                write_demo_runs(logdir)
            paths = capture(logdir, FLAGS.out_dir, chromium, scratch_dir)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            terminal.exit_with_error(e)
    for path in paths:
        print(f"{path} ({os.path.getsize(path) // 1024} KB)")


if __name__ == "__main__":
    app.run(main)
