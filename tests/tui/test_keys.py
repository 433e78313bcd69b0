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
        help_text = str(app.screen.query_one("#keys").render())
        palette = [c.title for c in app.get_system_commands(app.screen_stack[0])]
        for title, bindings in app.key_groups():
            for b in bindings:
                if not b.id:
                    continue
                key = b.key_display or b.key.split(",")[0]
                assert f"{key}  {b.description}" in help_text, (title, b.id)
                assert b.action == "quit" or f"{b.description} ({key})" in palette, b.id
        assert "partly frozen" in str(app.screen.query_one("#legend").render())
