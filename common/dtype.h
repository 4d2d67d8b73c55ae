#ifndef QD_DTYPE_H
#define QD_DTYPE_H
#endif
