"""Serve the tab (standalone host) after one finished job, for browser tests under any gradio stack.

``python tests/webui/serve_tab.py PORT WORKDIR`` — run with the Python of the stack under test
(e.g. the gradio 3.41.2 side venv of .ci/ui-compat, which needs no browser). The job is a
scripted runner that emits the engine's events and writes a real kohya file, so the tab holds a
finished run (name box filled once, loss chart, samples) the way it does after training; the
real engine is exercised by test_browser.py's training test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


STEP_SECONDS = [0.0]  # runs after the first one take SERVE_TAB_STEP_SECONDS per step (a run to watch)


def scripted_runner(cfg, callback, control):
    """Six steps, one sample, the final save (a 1-module kohya LoRA), done."""
    import time

    import numpy as np
    from PIL import Image
    from safetensors.numpy import save_file

    from extension.training.events import TrainingEvent, TrainResult

    out = Path(cfg.output_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    callback(TrainingEvent("start", total_steps=6, message="scripted"))
    for step in range(1, 7):
        time.sleep(STEP_SECONDS[0])
        callback(TrainingEvent("step", step=step, total_steps=6, loss=1.0 / step, lr=1e-4, eta_seconds=6 - step))
    Image.new("RGB", (16, 16), "red").save(out / "samples" / "s.png")
    callback(TrainingEvent("sample", step=6, total_steps=6, paths=[str(out / "samples" / "s.png")]))
    final = out / f"{cfg.output_name}.safetensors"
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{key}.lora_down.weight": np.zeros((2, 8), np.float16),
               f"{key}.lora_up.weight": np.zeros((8, 2), np.float16),
               f"{key}.alpha": np.array(2.0, np.float16)}, str(final))
    callback(TrainingEvent("saved", step=6, total_steps=6, paths=[str(final)]))
    return TrainResult("done", output_files=[str(final)], final_loss=1 / 6, steps=6, message="done")


def main() -> int:
    port, work = int(sys.argv[1]), Path(sys.argv[2])
    from extension.demo import make_shape_dataset
    from extension.jobs import JobManager
    from extension.ui import compat
    from extension.ui.host import Host
    from extension.ui.standalone import build_app, serve

    data = make_shape_dataset(work / "dataset")
    base = work / "models" / "base.safetensors"
    if len(sys.argv) > 3:
        base = Path(sys.argv[3])
    app, host, extra = build_app(str(base.parent), str(work / "loras"))
    assert isinstance(host, Host)
    host.jobs = JobManager(runner=scripted_runner)
    host.start_job({"base_model": str(base), "train_data_dir": str(data), "output_name": "finished_run",
                    "output_dir": str(host.work_dir("finished_run", "text-to-image"))})
    assert host.jobs.wait(60)["state"] == "done", host.jobs.status()
    STEP_SECONDS[0] = float(os.environ.get("SERVE_TAB_STEP_SECONDS", "0"))
    print(f"gradio {compat.gradio().__version__} on {port}", flush=True)
    if os.environ.get("SERVE_TAB_NO_LIVE"):  # a host that adds no route: the page polls through gradio events
        app.queue()
        app.launch(server_name="127.0.0.1", server_port=port, inbrowser=False, share=False, **extra)
    else:
        serve(app, host, "127.0.0.1", port, block=True, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
