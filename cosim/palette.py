"""Colours shared by sumo-gui's RSUs (sumo_net/generate_road.py) and the CVs coloured by decision."""

LOCAL_COLOR = (170, 170, 170, 255)
INACTIVE_COLOR = (60, 60, 60, 255)
# One saturated hue per RSU (a CV offloading there in DataT); InstrT mixes it halfway to white.
RSU_HUES = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60)]


def rsu_hue(k: int) -> tuple[int, int, int]:
    return RSU_HUES[k % len(RSU_HUES)]


def pale(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * 0.55) for c in rgb)  # type: ignore[return-value]
