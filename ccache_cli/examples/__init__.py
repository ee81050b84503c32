"""Example models bundled with ccache-cli."""
