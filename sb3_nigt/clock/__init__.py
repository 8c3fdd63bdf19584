"""The clock: exact time, the timing model, the discrete-event engine, the round planner and the real-clock driver."""
