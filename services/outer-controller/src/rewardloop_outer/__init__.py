"""rewardloop outer controller: sessions, business reward, bounded weight updates."""

__version__ = "0.1.0"
