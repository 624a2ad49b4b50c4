export * as libc from './libc';
export * from './kvm';
export { NativeError } from './libc';
export * as usbdevfs from './usbdevfs';
