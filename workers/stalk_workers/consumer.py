"""The worker's consumer (Celery's ``worker_consumer`` setting): task events sent in batches.

Celery 5.x buffers task events (``task-received``, ``task-started``, ``task-succeeded`` …) and
publishes the buffer as one ``task.multi`` message, but it schedules that flush for the event
loop's next turn, so under load almost every event went out in its own ``PUBLISH``: about a third
of the main process's time in a drain of no-op tasks (py-spy). Here the flush waits up to
``EVENT_FLUSH_SECONDS``, and Celery still flushes at once when the buffer reaches its limit
(24 events). The events and their fields are the same, and ``task.multi`` is what Flower and
every ``EventReceiver`` already read; they arrive up to ``EVENT_FLUSH_SECONDS`` later.
"""

from __future__ import annotations

from celery.worker.consumer import Consumer as CeleryConsumer

# Short enough that Flower and exporters show tasks without a visible lag.
EVENT_FLUSH_SECONDS = 0.1


class Consumer(CeleryConsumer):
    _event_flush = None  # the timer entry of the next flush

    def on_send_event_buffered(self) -> None:
        if self.hub is None:
            return
        # A reconnect cancels the loop's timer entries: then schedule again.
        if self._event_flush is None or self._event_flush.canceled:
            self._event_flush = self.hub.call_later(EVENT_FLUSH_SECONDS, self._flush_buffered_events)

    def _flush_buffered_events(self) -> None:
        self._event_flush = None
        self._flush_events()

    # What is still buffered goes out before the event dispatcher closes.
    def stop(self) -> None:
        self._flush_events()
        super().stop()

    def shutdown(self) -> None:
        self._flush_events()
        super().shutdown()
