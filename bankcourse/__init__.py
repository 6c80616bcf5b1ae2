"""bankcourse: real-time banking fraud detection, taught in three stages.

The library behind the course's notebooks: a PaySim-style data generator
(:mod:`bankcourse.generator`), the four fraud rules defined once
(:mod:`bankcourse.rules`), and the three stages that run them: file mode
(:mod:`bankcourse.file_mode`), Kafka mode (:mod:`bankcourse.kafka_mode`) and
Spark mode (:mod:`bankcourse.spark_mode`).
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
