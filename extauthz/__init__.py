"""extauthz: an external-authorization server for Envoy and other proxies that verifies
JWTs against a rotating JWKS and answers allow or deny.

The command line (``extauthz serve``, ``check-config``, ``test-config``, ``demo``) is the
main interface.
For embedding the decision core, the public names are few and stable::

    import extauthz

    config = extauthz.load_config("config.yaml")
    policy = extauthz.Policy(config)
    result = policy.decide(extauthz.AuthRequest(path="/x", headers={...}), keys, now)

Everything else is internal and may move between releases.
"""

from importlib import metadata as _metadata

from .config import Config
from .config import load as load_config
from .core.decision import Decision, NeedIntrospection, NeedKeys
from .core.policy import Policy
from .core.request import AuthRequest
from .errors import ConfigError, Denied, DenyKind, ExtAuthzError, JwksError, KeyFetchError

try:
    __version__ = _metadata.version("extauthz")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
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
]
