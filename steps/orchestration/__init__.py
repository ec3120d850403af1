"""How main chains the steps: the code hash and the key behind step reuse, starting and
stopping the steps, the step table, and a started step waiting for its upstream."""
