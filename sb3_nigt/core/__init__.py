"""The NIGT core: pure maths (the step, errors), no SB3, no processes, no clock."""
