"""Pure domain code: protocol, session state machine, registry, auth policy, ports, service."""
