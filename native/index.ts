export * as libc from './libc';
export * from './kvm';
export * as vfio from './vfio';
export { NativeError } from './libc';
export * as tun from './tun';
export * as usbdevfs from './usbdevfs';
export * as slirp from './slirp';
