"""Everything HTTP: towtruck's own connection handler and serve loop, the ASGI app
for Hypercorn deployments, and the Quart-Trio routes."""
