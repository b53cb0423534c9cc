"""The python stage of test_scaler_start's graph: importing it blocks while the file named by
``OMNISTAGE_TEST_HOLD`` exists, so a replica started then never becomes ready."""
import os
import time

while os.environ.get("OMNISTAGE_TEST_HOLD") and os.path.exists(os.environ["OMNISTAGE_TEST_HOLD"]):
    time.sleep(0.1)


def echo(text: str) -> str:
    return text
