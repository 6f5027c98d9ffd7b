"""What a command handler gets: the configuration and the store, loaded on first use."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from pathlib import Path

    from certkeeper.config import Config
    from certkeeper.store import Store


class Context:
    def __init__(self, config_path: str | None) -> None:
        self._explicit = config_path
        self._config: Config | None = None
        self._store: Store | None = None

    @property
    def config_path(self) -> Path:
        # Imported on first use: ``certkeeper check`` reads no configuration (the parser costs tens of ms).
        from certkeeper.config import config_path

        return config_path(self._explicit)

    @property
    def config(self) -> Config:
        if self._config is None:
            from certkeeper.config import load_config

            self._config = load_config(self.config_path)
        return self._config

    @property
    def store(self) -> Store:
        if self._store is None:
            from certkeeper.app import open_store

            self._store = open_store(self.config)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
