"""The paper's road for SUMO: the committed network, routes and RSU files in ``road/`` and their generator
(``python -m sumo_net.generate_road``)."""
