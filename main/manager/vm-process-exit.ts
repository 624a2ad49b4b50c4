// How a VM process leaves on its own (its manager went away, an uncaught error): the machine
// stops, and then the host USB devices it held go back to their kernel drivers. VmHost.stop()
// settles when the machine has ended, but the give-back it starts waits for node-usb's
// callbacks (releasing interfaces), which come later: exiting at stop() would leave a device
// with no driver, for the next manager start's journal repair.

export interface StoppableHost {
  stop(): Promise<void>;
  /** Settles once the host USB devices of the last stop are back with the host. */
  readonly hostUsbReleased: Promise<void>;
}

export async function stopAndGiveBack(host: StoppableHost | null): Promise<void> {
  if (host === null) return;
  try {
    await host.stop();
  } finally {
    // Read after stop(): the stop is what starts the give-back and replaces this promise.
    await host.hostUsbReleased;
  }
}
