"""Running extauthz: one serving process (``process``: start, drain, stop), its reload
(``reload``: a pure plan, then one swap), TLS files that follow cert-manager
(``tls``), periodic jobs on one tick (``ticker``), the admin endpoints (``admin``) and
several worker processes on one port (``workers``)."""
