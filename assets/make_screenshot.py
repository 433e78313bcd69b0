"""Regenerate assets/freezetui.svg: the app, driven by keys, saves a screenshot of itself.

ResNet-18 (random init: no download) on the built-in shapes data; one run with everything
trainable, one with the fine-tune recipe (the head alone for an epoch, then everything at rates
spread over the blocks), the first overlaid on the second.

    python assets/make_screenshot.py
"""

import asyncio
import os
import tempfile
from pathlib import Path

from freezetui.core.config import TrainConfig
from freezetui.core.specs import ModelSpec
from freezetui.tui.app import AppOptions, create_app

OUT = Path(__file__).with_name("freezetui.svg")


async def main() -> None:
    runs = tempfile.mkdtemp()
    app = create_app(AppOptions(model=ModelSpec("resnet18", weights="none"), runs_dir=runs,
                                config=TrainConfig(epochs=2, device="cpu")))
    async with app.run_test(size=(120, 36)) as pilot:
        while app.workspace is None:  # the model loads on a thread of its own
            await pilot.pause(0.1)
        await pilot.pause()
        await pilot.press("t")  # everything trainable
        await app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.press("R", "t")  # the fine-tune recipe
        await app.workers.wait_for_complete()
        await pilot.pause()
        app.main("#runs").focus()
        await pilot.press("up", "enter")
        app.clear_notifications()
        app.main("#tree").focus()
        await pilot.press("j", "j", "j", "j", "j")  # layer1: @2 ×0.01
        app.redraw_charts(force=True)
        await pilot.pause()
        app.save_screenshot(str(OUT.name), path=str(OUT.parent))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    os.environ.setdefault("FREEZETUI_OFFLINE", "1")
    asyncio.run(main())
