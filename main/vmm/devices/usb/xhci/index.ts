// The xHCI controller, independent of PCI. Wiring (the lead's part):
// - a PCI function of class 0x0c0330 with one 64-bit memory BAR of XhciController.BAR_SIZE
//   bytes whose accesses go to read(offset, size) / write(offset, size, value);
// - options.dma: the function's DmaMemory (refuses DMA while bus mastering is off);
// - options.interrupts: raise(i) sends MSI-X vector i (return true) or asserts INTx
//   (return false/undefined, then lower(i) when IP or IE clears);
// - options.clock: performance.now-like ms and the machine context's setTimer;
// - options.count: stats counters; options.log: the VM log;
// - reset() on PCI/machine reset; attach/attachAnywhere/detach for hot-plug; portList() for the UI.
export { XhciController, type XhciClock, type XhciInterruptSink, type XhciOptions, type XhciPortInfo } from './controller';
export { XHCI_BAR_SIZE, MAX_PORTS, MAX_INTRS, USB3_PORTS, USB2_PORTS } from './constants';
