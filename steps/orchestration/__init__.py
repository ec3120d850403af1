"""How main chains the steps: the code hash behind step reuse, waiting for the upstream step."""
