"""The clock: exact time, the timing model, the discrete-event engine, the round planner, the real-clock driver."""
