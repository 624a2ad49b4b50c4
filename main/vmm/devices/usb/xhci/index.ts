export { XhciController, type XhciClock, type XhciInterruptSink, type XhciOptions, type XhciPortInfo } from './controller';
export { XHCI_BAR_SIZE, MAX_PORTS, USB3_PORTS, USB2_PORTS } from './constants';
