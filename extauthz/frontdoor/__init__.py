"""Front doors: each turns one protocol's request into an AuthRequest, asks the
Authorizer, and turns the Decision into that protocol's answer through one table."""
