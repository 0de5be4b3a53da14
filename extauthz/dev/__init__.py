"""Development tooling, apart from the serving path: the dev token issuer, the demo and
the Envoy launcher it uses. Nothing under ``extauthz.server`` imports from here."""
