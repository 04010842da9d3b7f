"""Building blocks of the plugin's models and criterions (registered nowhere)."""
