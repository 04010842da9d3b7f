"""Option dataclasses shared by the plugin's tasks and models: each option is defined once, here."""
