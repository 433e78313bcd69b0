"""Every key can be found: the footer's keys fit the screen at 80 and 120 columns, and every
binding is in the help (?) and in the command palette."""

import pytest
from textual.widgets import Footer

from tui.fakes import make_app


def footer_keys(app) -> dict[str, int]:
    """The footer's keys and the column each one ends at."""
    footer = app.screen.query_one(Footer)
    return {k.action: k.region.right for k in footer.query("FooterKey")}


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_footer_keys_are_all_on_screen_and_the_rest_in_help(tmp_path, size):
    app = make_app(tmp_path)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        shown = footer_keys(app)
        assert {"help", "quit", "train", "toggle_freeze", "command_palette"} <= set(shown)
        assert all(right <= size[0] for right in shown.values()), shown  # none cut off
        await pilot.press("question_mark")
        help_text = "".join(str(app.screen.query_one(f"#{i}").render()) for i in ("keys", "keys-anywhere"))
        palette = [c.title for c in app.get_system_commands(app.screen_stack[0])]
        for title, bindings in app.key_groups():
            for b in bindings:
                if not b.id:
                    continue
                key = b.key_display or b.key.split(",")[0]
                assert f"{key}  {b.description}" in help_text, (title, b.id)
                assert b.action == "quit" or f"{b.description} ({key})" in palette, b.id
        assert "partly frozen" in str(app.screen.query_one("#legend").render())


async def test_the_palette_has_one_entry_per_action(tmp_path):
    """Each action once, its help line saying where the key works rather than repeating the title."""
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        commands = list(app.get_system_commands(app.screen_stack[0]))
        titles = [c.title for c in commands]
        assert len(titles) == len(set(titles)), titles
        for c in commands:
            assert c.help and c.help not in c.title, c.title
        bare = [t.rsplit(" (", 1)[0] for t in titles]
        assert len(bare) == len(set(bare)), bare  # no "Freeze (f)" beside a "Freeze"
        await pilot.press("ctrl+p")
        await pilot.press(*"freeze")
        await pilot.pause(0.5)
        from textual.widgets import OptionList

        shown = [str(o.prompt).split("\n") for o in app.screen.query_one(OptionList)._options]
        assert shown and all(len(lines) == 1 or lines[1] not in lines[0] for lines in shown), shown


async def test_help_fits_120x40_without_scrolling(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        body = app.screen.query_one("#help-body")
        assert body.max_scroll_y == 0  # nothing below the fold
        close = app.screen.query_one(".dialog-help")
        assert close.region.bottom <= 40 and "closes" in str(close.render())
