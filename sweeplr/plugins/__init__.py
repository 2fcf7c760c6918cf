"""sweeplr's Hydra plugins, found by Hydra through the ``hydra.plugins`` entry points."""
