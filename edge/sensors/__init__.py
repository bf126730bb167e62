"""Sensor sources: one interface, a timestamped Reading, whatever the board exposes.

    jtop    jetson-stats' service (Jetson), when it answers
    sysfs   thermal zones and trip points, INA3221 rails (hwmon and iio), batteries, RAPL
    replay  a recorded trace (CSV or JSON lines), for tests and the test scripts

`open_first` tries sources in order and reports why each one it skipped is unavailable.
"""

from edge.sensors.base import FIELDS, Reading, SensorError, SensorSource, SensorUnavailable, open_first

__all__ = ["FIELDS", "Reading", "SensorError", "SensorSource", "SensorUnavailable", "open_first"]
