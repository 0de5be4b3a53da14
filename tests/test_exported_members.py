"""The public surface is deliberate: exactly these names, each defined where it claims."""

from __future__ import annotations

import importlib.metadata
import importlib.resources

import extauthz

EXPECTED = {
    "AuthRequest",
    "Config",
    "ConfigError",
    "Decision",
    "Denied",
    "DenyKind",
    "ExtAuthzError",
    "JwksError",
    "KeyFetchError",
    "NeedIntrospection",
    "NeedKeys",
    "Policy",
    "__version__",
    "load_config",
}


def test_exported_members() -> None:
    assert set(extauthz.__all__) == EXPECTED
    public = {name for name in dir(extauthz) if not name.startswith("_")}
    # Subpackages and modules show up as attributes once imported; nothing else may.
    modules = {name for name in public if type(getattr(extauthz, name)).__name__ == "module"}
    assert public - modules == EXPECTED - {"__version__"}
    for name in EXPECTED - {"__version__"}:
        member = getattr(extauthz, name)
        assert member.__module__.startswith("extauthz."), name


def test_version_comes_from_the_package_metadata() -> None:
    assert extauthz.__version__ == importlib.metadata.version("extauthz")


def test_the_package_is_typed() -> None:
    files = importlib.metadata.files("extauthz") or []
    assert any(str(f).endswith("py.typed") for f in files) or (
        # an editable install lists no package files: the marker is in the source tree
        (importlib.resources.files("extauthz") / "py.typed").is_file()
    )
