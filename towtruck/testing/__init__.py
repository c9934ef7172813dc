"""Test helpers shipped as product, for towtruck's own tests and for its users':

- :func:`cluster`: real nodes on free loopback ports in one trio program (real HTTP
  between them);
- :func:`simulate` and :func:`open_simulation`: hundreds of real nodes in one trio
  program on trio's autojump clock, talking through a simulated network that delays,
  drops, duplicates and partitions messages, every run replayed from its seed.
"""

from .loopback import Cluster, ClusterClient, cluster
from .network import SimulatedNetwork, SimulatedPeers
from .simulation import SimulatedNode, Simulation, SimulationFailed, open_simulation, simulate

__all__ = [
    "Cluster",
    "ClusterClient",
    "SimulatedNetwork",
    "SimulatedNode",
    "SimulatedPeers",
    "Simulation",
    "SimulationFailed",
    "cluster",
    "open_simulation",
    "simulate",
]
