"""Modal dialogs, one per module."""

from bloomtui.tui.screens.model_picker import ModelPickerScreen
from bloomtui.tui.screens.settings import SettingsScreen

__all__ = ["ModelPickerScreen", "SettingsScreen"]
